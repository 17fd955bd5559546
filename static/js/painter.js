// The saliency painter: a soft brush, eraser and lasso over a full-resolution 8-bit mask.
//
// Built for 4096x4096 images. `Painter` is the one object pages use (settings, tools, undo,
// view, load/replace the mask, events); it composes four parts in ./painter/:
// - history.js  (MaskHistory) undo/redo over 128x128 tile snapshots of the mask;
// - raster.js   brush/eraser capsules and lasso polygons rasterised into the mask;
// - renderer.js (Renderer) the image, coloured overlay, lasso and brush ring on screen,
//   redrawing only dirty rectangles once per animation frame;
// - input.js    (PointerInput) pointer, wheel and Space-to-pan handling on the stage.
//
// Events: "change" ({detail: {kind}}) after every undoable edit, undo and redo; "settings" after
// a tool or brush setting changed; "viewchange" ({detail: view}) after a pan or zoom.

import { MaskHistory } from "./painter/history.js";
import { PointerInput } from "./painter/input.js";
import { clamp, fillCoverage, makeFalloff, paintSegment, polygonCoverage } from "./painter/raster.js";
import { Renderer } from "./painter/renderer.js";

export { OVERLAY_LUT } from "./painter/renderer.js";

const TOOLS = ["brush", "eraser", "lasso"];

export class Painter extends EventTarget {
  /**
   * @param {HTMLElement} stage an empty, positioned element that the painter fills
   * @param {CanvasImageSource} image the decoded image
   * @param {number} width image width in pixels
   * @param {number} height image height in pixels
   */
  constructor(stage, image, width, height) {
    super();
    this.stage = stage;
    this.image = image;
    this.width = width;
    this.height = height;
    this.mask = new Uint8Array(width * height);

    this.tool = "brush"; // brush | eraser | lasso
    this.size = Math.max(4, Math.round(Math.min(width, height) / 10)); // diameter, image pixels
    this.hardness = 0.5;
    this.strength = 1.0;
    this.opacity = 0.7;
    this.maskVisible = true;
    this.falloff = makeFalloff(this.hardness);

    this.view = { scale: 1, x: 0, y: 0 }; // screen = image * scale + (x, y), stage CSS px
    this.stats = { segments: [], frames: [] }; // per-segment and per-frame ms, for the benchmark

    stage.classList.add("painter-stage");
    stage.tabIndex = 0;
    stage.setAttribute("role", "application");
    stage.setAttribute(
      "aria-label",
      "Saliency canvas. Drag to paint, hold Space and drag to pan, use the mouse wheel to zoom.",
    );
    // The stage knows its painter: the handle browser tests and debugging use (no window globals).
    stage.sagePainter = this;
    this.renderer = new Renderer(stage, this, this.stats);
    this.renderer.setOpacity(this.opacity);
    this.history = new MaskHistory(this.mask, width, height, (x0, y0, x1, y1) =>
      this.renderer.dirty.add(x0, y0, x1, y1),
    );
    this._resizeObserver = new ResizeObserver(() => this.resize());
    this._resizeObserver.observe(stage);
    this.input = new PointerInput(this);
    this.resize();
    this.fit();
  }

  // --- view ---------------------------------------------------------------------------------

  /** The canvas showing the image (pages may set a CSS filter on it for a live preview). */
  get imageCanvas() {
    return this.renderer.imageCanvas;
  }
  /** Stage size in CSS pixels. */
  get cssW() {
    return this.renderer.cssW;
  }
  get cssH() {
    return this.renderer.cssH;
  }
  /** Whether Space is held (a left drag pans instead of painting). */
  get spaceDown() {
    return this.input.spaceDown;
  }

  resize() {
    const old = this.renderer.resize();
    if (old && old[0] > 0) {
      // keep the image point at the centre where it was
      this.view.x += this.cssW / 2 - old[0] / 2;
      this.view.y += this.cssH / 2 - old[1] / 2;
    }
  }

  fit() {
    const pad = 16;
    const scale = Math.min((this.cssW - 2 * pad) / this.width, (this.cssH - 2 * pad) / this.height);
    this.view.scale = scale > 0 ? scale : 1;
    this.view.x = (this.cssW - this.width * this.view.scale) / 2;
    this.view.y = (this.cssH - this.height * this.view.scale) / 2;
    this._viewChanged();
  }

  zoomAt(factor, sx, sy) {
    const v = this.view;
    const fitScale = Math.min(this.cssW / this.width, this.cssH / this.height);
    const next = clamp(v.scale * factor, Math.min(fitScale * 0.25, 0.02), 64);
    const k = next / v.scale;
    v.x = sx - (sx - v.x) * k;
    v.y = sy - (sy - v.y) * k;
    v.scale = next;
    this._viewChanged();
  }

  _viewChanged() {
    this._updateCursor();
    this.renderer.requestFull();
    this.dispatchEvent(new CustomEvent("viewchange", { detail: { ...this.view } }));
  }

  toImage(clientX, clientY) {
    const r = this.stage.getBoundingClientRect();
    return [(clientX - r.left - this.view.x) / this.view.scale, (clientY - r.top - this.view.y) / this.view.scale];
  }

  _updateCursor() {
    const input = this.input;
    this.renderer.drawCursor(
      input.cursorHidden ? null : input.pointer,
      this.size * this.view.scale,
      this.tool === "eraser",
    );
  }

  /** Show another rendering of the same image (e.g. a new display window); the mask is untouched. */
  setImage(image) {
    this.image = image;
    this.renderer.imageChanged();
  }

  /** Bring the overlay and the screen up to date now (normally called once per frame). */
  flush() {
    this.renderer.flush();
  }

  // --- settings -----------------------------------------------------------------------------

  setTool(tool) {
    if (!TOOLS.includes(tool)) throw new Error(`unknown tool ${tool}`);
    this.cancelLasso();
    this.tool = tool;
    this.stage.dataset.tool = tool;
    this._updateCursor();
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setSize(px) {
    this.size = clamp(Math.round(px), 1, Math.max(this.width, this.height));
    this._updateCursor();
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setHardness(h) {
    this.hardness = clamp(h, 0, 1);
    this.falloff = makeFalloff(this.hardness);
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setStrength(s) {
    this.strength = clamp(s, 0, 1);
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setOpacity(o) {
    this.opacity = clamp(o, 0, 1);
    this.renderer.setOpacity(this.opacity);
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setMaskVisible(visible) {
    this.maskVisible = visible;
    this.renderer.setMaskVisible(visible);
    this.dispatchEvent(new CustomEvent("settings"));
  }
  /** Space held or released (the page owns the keyboard). */
  setSpace(down) {
    this.input.setSpace(down);
    this._updateCursor();
  }

  // --- operations and undo ------------------------------------------------------------------

  _beginOp(kind) {
    this.history.begin(kind);
  }

  _endOp() {
    const kind = this.history.end();
    if (!kind) return false;
    this._changed(kind);
    return true;
  }

  _changed(kind) {
    this.dispatchEvent(new CustomEvent("change", { detail: { kind } }));
  }

  undo() {
    if (!this.history.undo()) return false;
    this.renderer.requestFrame();
    this._changed("undo");
    return true;
  }

  redo() {
    if (!this.history.redo()) return false;
    this.renderer.requestFrame();
    this._changed("redo");
    return true;
  }

  get canUndo() {
    return this.history.canUndo;
  }
  get canRedo() {
    return this.history.canRedo;
  }

  /** Replace the whole mask as one undoable step (clear, start from the model, take theirs). */
  replaceMask(next, kind = "replace") {
    if (next.length !== this.mask.length) throw new Error("mask size mismatch");
    const h = this.history;
    h.begin(kind);
    for (let key = 0; key < h.tilesX * h.tilesY; key++) {
      const [, , x0, y0, x1, y1] = h.tileBounds(key);
      let differs = false;
      for (let y = y0; y < y1 && !differs; y++) {
        const row = y * this.width;
        for (let x = x0; x < x1; x++) {
          if (this.mask[row + x] !== next[row + x]) {
            differs = true;
            break;
          }
        }
      }
      if (!differs) continue;
      h.touch(x0, y0, x1, y1);
      for (let y = y0; y < y1; y++) {
        const row = y * this.width;
        this.mask.set(next.subarray(row + x0, row + x1), row + x0);
      }
      this.renderer.dirty.add(x0, y0, x1, y1);
    }
    const changed = this._endOp();
    this.renderer.requestFrame();
    return changed;
  }

  clear() {
    return this.replaceMask(new Uint8Array(this.mask.length), "clear");
  }

  /** Set the mask without an undo step (initial load, restoring a draft). */
  loadMask(data) {
    if (data.length !== this.mask.length) throw new Error("mask size mismatch");
    this.mask.set(data);
    this.history.reset();
    this.renderer.invalidate(0, 0, this.width, this.height);
  }

  hasPaint() {
    for (let i = 0; i < this.mask.length; i++) if (this.mask[i]) return true;
    return false;
  }

  /**
   * Paint one stroke segment from (ax, ay) to (bx, by) in image pixels with the current brush;
   * s0, s1 strengths 0..1. Call between _beginOp and _endOp (one stroke = one undo step).
   */
  paintSegment(ax, ay, bx, by, s0, s1, erase) {
    const t0 = performance.now();
    const rect = paintSegment(this.history, this.falloff, this.size, ax, ay, bx, by, s0, s1, erase);
    if (!rect) return;
    this.renderer.dirty.add(rect[0], rect[1], rect[2], rect[3]);
    const segments = this.stats.segments;
    segments.push(performance.now() - t0);
    if (segments.length > 5000) segments.splice(0, 2500);
    this.renderer.requestFrame();
  }

  /** Fill a polygon (image coordinates) with anti-aliased edges as one undo step; erase lowers instead. */
  fillPolygon(points, strength, erase) {
    const area = polygonCoverage(points, this.width, this.height);
    if (!area) return false;
    this._beginOp(erase ? "lasso-erase" : "lasso");
    const [x0, y0, x1, y1] = fillCoverage(this.history, area, strength, erase);
    this.renderer.invalidate(x0, y0, x1, y1);
    return this._endOp();
  }

  // --- lasso --------------------------------------------------------------------------------

  get lassoOpen() {
    const lasso = this.input.lasso;
    return !!(lasso && lasso.points.length);
  }

  /** Fill the open lasso (one undo step); false when none is open or it changed nothing. */
  closeLasso() {
    const lasso = this.input.takeLasso();
    if (!lasso) return false;
    this.renderer.drawLasso(null);
    return this.fillPolygon(lasso.points, this.strength, lasso.erase);
  }

  cancelLasso() {
    if (!this.input.takeLasso()) return;
    this.renderer.drawLasso(null);
  }

  destroy() {
    this._resizeObserver.disconnect();
    this.stage.replaceChildren();
  }
}
