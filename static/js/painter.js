// The saliency painter: a soft brush, eraser and lasso over a full-resolution 8-bit mask.
//
// Design for 4096x4096 images:
// - The mask is one Uint8Array at image resolution (the saved map, 0 = irrelevant .. 255 = most
//   salient). A stroke rasterises each pointer segment as a capsule (exact distance to the segment,
//   so no dab spacing artefacts) into the mask, touching only the pixels under the brush.
// - Undo works on 128x128 tiles: an operation snapshots a tile the first time it changes it, so
//   a stroke costs memory in proportion to what it touched, not to the image.
// - Display: two viewport-sized canvases (image, mask) under a CSS-sized cursor ring. The coloured
//   overlay lives in a full-resolution OffscreenCanvas updated only over dirty rectangles, and the
//   on-screen mask canvas redraws only the dirty rectangle, once per animation frame.
//
// Stroke semantics (graded saliency): the brush raises pixels towards strength x coverage
// (max, so overlapping passes of one stroke never exceed the chosen level); the eraser lowers
// pixels to original x (1 - strength x coverage) within one stroke. Pen pressure scales strength.

const TILE = 128;
const OVERLAY_TILE = 512;
const MIN_UNDO_STEPS = 50;
const MAX_UNDO_STEPS = 200;
const MAX_UNDO_BYTES = 384 * 1024 * 1024;
const FALLOFF_STEPS = 1024;

/** Colour map for the overlay: transparent at 0, then violet -> red -> amber -> pale yellow. */
function makeOverlayLUT() {
  const stops = [
    [0.0, [110, 40, 220]],
    [0.35, [235, 40, 120]],
    [0.65, [255, 110, 20]],
    [1.0, [255, 225, 0]],
  ];
  const lut = new Uint32Array(256);
  for (let v = 1; v < 256; v++) {
    const t = v / 255;
    let i = 0;
    while (i < stops.length - 2 && t > stops[i + 1][0]) i++;
    const [t0, c0] = stops[i];
    const [t1, c1] = stops[i + 1];
    const u = Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
    const r = Math.round(c0[0] + (c1[0] - c0[0]) * u);
    const g = Math.round(c0[1] + (c1[1] - c0[1]) * u);
    const b = Math.round(c0[2] + (c1[2] - c0[2]) * u);
    const a = Math.round(90 + 165 * t);
    lut[v] = (a << 24) | (b << 16) | (g << 8) | r; // little-endian RGBA
  }
  return lut;
}
export const OVERLAY_LUT = makeOverlayLUT();

function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

class Rect {
  constructor() {
    this.reset();
  }
  reset() {
    this.x0 = Infinity;
    this.y0 = Infinity;
    this.x1 = -Infinity;
    this.y1 = -Infinity;
  }
  add(x0, y0, x1, y1) {
    if (x0 < this.x0) this.x0 = x0;
    if (y0 < this.y0) this.y0 = y0;
    if (x1 > this.x1) this.x1 = x1;
    if (y1 > this.y1) this.y1 = y1;
  }
  get empty() {
    return this.x1 <= this.x0 || this.y1 <= this.y0;
  }
}

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
    this.tilesX = Math.ceil(width / TILE);
    this.tilesY = Math.ceil(height / TILE);

    this.tool = "brush"; // brush | eraser | lasso
    this.size = Math.max(4, Math.round(Math.min(width, height) / 10)); // diameter, image pixels
    this.hardness = 0.5;
    this.strength = 1.0;
    this.opacity = 0.7;
    this.maskVisible = true;

    this.undoStack = [];
    this.redoStack = [];
    this.undoBytes = 0;
    this.op = null;
    this.stats = { segments: [], frames: [] };

    this.view = { scale: 1, x: 0, y: 0 };
    this.dpr = window.devicePixelRatio || 1;
    this.dirty = new Rect();
    this.fullRedraw = true;
    this.frameRequested = false;
    this.spaceDown = false;
    this.panning = null;
    this.stroke = null;
    this.lasso = null; // {points: [[x,y]...], dragging: bool}
    this.lastPointer = null;

    this._buildDom();
    // The coloured overlay in 512x512 tiles: updating one tile never forces the browser to copy
    // a whole 4096x4096 canvas that the screen canvas still references (copy-on-write).
    this.overlayTiles = [];
    for (let y = 0; y < height; y += OVERLAY_TILE) {
      for (let x = 0; x < width; x += OVERLAY_TILE) {
        const c = new OffscreenCanvas(Math.min(OVERLAY_TILE, width - x), Math.min(OVERLAY_TILE, height - y));
        this.overlayTiles.push({ x, y, w: c.width, h: c.height, canvas: c, ctx: c.getContext("2d") });
      }
    }
    this._makeFalloff();
    this._bindEvents();
    this.resize();
    this.fit();
  }

  // --- DOM and view -------------------------------------------------------------------------

  _buildDom() {
    const s = this.stage;
    s.classList.add("painter-stage");
    s.tabIndex = 0;
    s.setAttribute("role", "application");
    s.setAttribute(
      "aria-label",
      "Saliency canvas. Drag to paint, hold Space and drag to pan, use the mouse wheel to zoom.",
    );
    this.imageCanvas = document.createElement("canvas");
    this.maskCanvas = document.createElement("canvas");
    this.uiCanvas = document.createElement("canvas");
    for (const c of [this.imageCanvas, this.maskCanvas, this.uiCanvas]) {
      c.className = "painter-layer";
      c.setAttribute("aria-hidden", "true");
      s.appendChild(c);
    }
    this.maskCanvas.classList.add("painter-mask");
    this.cursorEl = document.createElement("div");
    this.cursorEl.className = "brush-cursor";
    this.cursorEl.setAttribute("aria-hidden", "true");
    s.appendChild(this.cursorEl);
    this.imageCtx = this.imageCanvas.getContext("2d", { alpha: false });
    this.maskCtx = this.maskCanvas.getContext("2d");
    this.uiCtx = this.uiCanvas.getContext("2d");
    this.maskCanvas.style.opacity = String(this.opacity);
    this._resizeObserver = new ResizeObserver(() => this.resize());
    this._resizeObserver.observe(s);
  }

  resize() {
    const r = this.stage.getBoundingClientRect();
    const w = Math.max(1, Math.round(r.width));
    const h = Math.max(1, Math.round(r.height));
    if (this.cssW === w && this.cssH === h) return;
    const hadSize = this.cssW > 0;
    const cx = this.cssW / 2;
    const cy = this.cssH / 2;
    this.cssW = w;
    this.cssH = h;
    this.dpr = window.devicePixelRatio || 1;
    for (const c of [this.imageCanvas, this.maskCanvas, this.uiCanvas]) {
      c.width = Math.round(w * this.dpr);
      c.height = Math.round(h * this.dpr);
      c.style.width = `${w}px`;
      c.style.height = `${h}px`;
    }
    if (hadSize) {
      // keep the image point at the centre where it was
      this.view.x += w / 2 - cx;
      this.view.y += h / 2 - cy;
    }
    this._requestFull();
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
    this._requestFull();
    this.dispatchEvent(new CustomEvent("viewchange", { detail: { ...this.view } }));
  }

  toImage(clientX, clientY) {
    const r = this.stage.getBoundingClientRect();
    return [(clientX - r.left - this.view.x) / this.view.scale, (clientY - r.top - this.view.y) / this.view.scale];
  }

  // --- settings -----------------------------------------------------------------------------

  setTool(tool) {
    if (!["brush", "eraser", "lasso"].includes(tool)) throw new Error(`unknown tool ${tool}`);
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
    this._makeFalloff();
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setStrength(s) {
    this.strength = clamp(s, 0, 1);
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setOpacity(o) {
    this.opacity = clamp(o, 0, 1);
    this.maskCanvas.style.opacity = String(this.opacity);
    this.dispatchEvent(new CustomEvent("settings"));
  }
  setMaskVisible(visible) {
    this.maskVisible = visible;
    this.maskCanvas.hidden = !visible;
    this.dispatchEvent(new CustomEvent("settings"));
  }

  /** Coverage as a function of (distance / radius)^2, sampled: smoothstep from `hardness` to the rim. */
  _makeFalloff() {
    const lut = new Float32Array(FALLOFF_STEPS + 1);
    const h = Math.min(this.hardness, 0.999);
    for (let i = 0; i <= FALLOFF_STEPS; i++) {
      const r = Math.sqrt(i / FALLOFF_STEPS);
      if (r <= h) lut[i] = 1;
      else {
        const u = (r - h) / (1 - h);
        lut[i] = 1 - u * u * (3 - 2 * u);
      }
    }
    this.falloff = lut;
  }

  // --- operations and undo ------------------------------------------------------------------

  _beginOp(kind) {
    this.op = { kind, before: new Map(), after: null, bytes: 0 };
  }

  /** Snapshot (once per operation) every tile overlapping the half-open rectangle. */
  _touch(x0, y0, x1, y1) {
    const op = this.op;
    const tx0 = Math.max(0, Math.floor(x0 / TILE));
    const ty0 = Math.max(0, Math.floor(y0 / TILE));
    const tx1 = Math.min(this.tilesX - 1, Math.floor((x1 - 1) / TILE));
    const ty1 = Math.min(this.tilesY - 1, Math.floor((y1 - 1) / TILE));
    for (let ty = ty0; ty <= ty1; ty++) {
      for (let tx = tx0; tx <= tx1; tx++) {
        const key = ty * this.tilesX + tx;
        if (!op.before.has(key)) op.before.set(key, this._readTile(tx, ty));
      }
    }
  }

  _tileBounds(key) {
    const tx = key % this.tilesX;
    const ty = Math.floor(key / this.tilesX);
    const x0 = tx * TILE;
    const y0 = ty * TILE;
    return [tx, ty, x0, y0, Math.min(this.width, x0 + TILE), Math.min(this.height, y0 + TILE)];
  }

  _readTile(tx, ty) {
    const x0 = tx * TILE;
    const y0 = ty * TILE;
    const w = Math.min(this.width, x0 + TILE) - x0;
    const h = Math.min(this.height, y0 + TILE) - y0;
    const out = new Uint8Array(w * h);
    for (let y = 0; y < h; y++) {
      const src = (y0 + y) * this.width + x0;
      out.set(this.mask.subarray(src, src + w), y * w);
    }
    return out;
  }

  _writeTile(key, data) {
    const [, , x0, y0, x1, y1] = this._tileBounds(key);
    const w = x1 - x0;
    for (let y = y0; y < y1; y++) this.mask.set(data.subarray((y - y0) * w, (y - y0 + 1) * w), y * this.width + x0);
    this.dirty.add(x0, y0, x1, y1);
  }

  _endOp() {
    const op = this.op;
    this.op = null;
    if (!op) return false;
    const after = new Map();
    let bytes = 0;
    for (const [key, before] of op.before) {
      const [tx, ty] = this._tileBounds(key);
      const now = this._readTile(tx, ty);
      let same = true;
      for (let i = 0; i < now.length; i++) {
        if (now[i] !== before[i]) {
          same = false;
          break;
        }
      }
      if (same) op.before.delete(key);
      else {
        after.set(key, now);
        bytes += 2 * now.length;
      }
    }
    if (!after.size) return false;
    op.after = after;
    op.bytes = bytes;
    this.undoStack.push(op);
    this.undoBytes += bytes;
    for (const r of this.redoStack) this.undoBytes -= r.bytes;
    this.redoStack = [];
    while (
      this.undoStack.length > MAX_UNDO_STEPS ||
      (this.undoStack.length > MIN_UNDO_STEPS && this.undoBytes > MAX_UNDO_BYTES)
    ) {
      this.undoBytes -= this.undoStack.shift().bytes;
    }
    this._changed(op.kind);
    return true;
  }

  undo() {
    const op = this.undoStack.pop();
    if (!op) return false;
    for (const [key, data] of op.before) this._writeTile(key, data);
    this.redoStack.push(op);
    this._requestFrame();
    this._changed("undo");
    return true;
  }

  redo() {
    const op = this.redoStack.pop();
    if (!op) return false;
    for (const [key, data] of op.after) this._writeTile(key, data);
    this.undoStack.push(op);
    this._requestFrame();
    this._changed("redo");
    return true;
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }
  get canRedo() {
    return this.redoStack.length > 0;
  }

  _changed(kind) {
    this.dispatchEvent(new CustomEvent("change", { detail: { kind } }));
  }

  /** Replace the whole mask as one undoable step (clear, start from the model, take theirs). */
  replaceMask(next, kind = "replace") {
    if (next.length !== this.mask.length) throw new Error("mask size mismatch");
    this._beginOp(kind);
    for (let key = 0; key < this.tilesX * this.tilesY; key++) {
      const [, , x0, y0, x1, y1] = this._tileBounds(key);
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
      this._touch(x0, y0, x1, y1);
      for (let y = y0; y < y1; y++) {
        const row = y * this.width;
        this.mask.set(next.subarray(row + x0, row + x1), row + x0);
      }
      this.dirty.add(x0, y0, x1, y1);
    }
    const changed = this._endOp();
    this._requestFrame();
    return changed;
  }

  clear() {
    return this.replaceMask(new Uint8Array(this.mask.length), "clear");
  }

  /** Set the mask without an undo step (initial load, restoring a draft). */
  loadMask(data) {
    if (data.length !== this.mask.length) throw new Error("mask size mismatch");
    this.mask.set(data);
    this.undoStack = [];
    this.redoStack = [];
    this.undoBytes = 0;
    this.dirty.add(0, 0, this.width, this.height);
    this._requestFrame();
  }

  hasPaint() {
    for (let i = 0; i < this.mask.length; i++) if (this.mask[i]) return true;
    return false;
  }

  // --- rasterisation -----------------------------------------------------------------------

  /** Paint one stroke segment from (ax, ay) to (bx, by) in image pixels; s0, s1 strengths 0..1. */
  paintSegment(ax, ay, bx, by, s0, s1, erase) {
    const t0 = performance.now();
    const R = this.size / 2;
    const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - R));
    const y0 = Math.max(0, Math.floor(Math.min(ay, by) - R));
    const x1 = Math.min(this.width, Math.ceil(Math.max(ax, bx) + R) + 1);
    const y1 = Math.min(this.height, Math.ceil(Math.max(ay, by) + R) + 1);
    if (x1 <= x0 || y1 <= y0) return;
    this._touch(x0, y0, x1, y1);
    const dx = bx - ax;
    const dy = by - ay;
    const len2 = dx * dx + dy * dy;
    const inv = len2 > 1e-9 ? 1 / len2 : 0;
    const R2 = Math.max(R * R, 0.25);
    const lutScale = FALLOFF_STEPS / R2;
    const lut = this.falloff;
    const mask = this.mask;
    const W = this.width;
    const ds = s1 - s0;
    const before = this.op.before;
    // Walk tile by tile so the eraser can read the stroke-start value from the undo snapshot.
    const tx0 = Math.floor(x0 / TILE);
    const tx1 = Math.floor((x1 - 1) / TILE);
    const ty0 = Math.floor(y0 / TILE);
    const ty1 = Math.floor((y1 - 1) / TILE);
    for (let ty = ty0; ty <= ty1; ty++) {
      const tyA = Math.max(y0, ty * TILE);
      const tyB = Math.min(y1, ty * TILE + TILE);
      for (let tx = tx0; tx <= tx1; tx++) {
        const key = ty * this.tilesX + tx;
        const orig = before.get(key);
        const tileX0 = tx * TILE;
        const tileW = Math.min(W, tileX0 + TILE) - tileX0;
        const txA = Math.max(x0, tileX0);
        const txB = Math.min(x1, tileX0 + TILE);
        for (let y = tyA; y < tyB; y++) {
          const py = y + 0.5 - ay;
          const row = y * W;
          const orow = (y - ty * TILE) * tileW - tileX0;
          for (let x = txA; x < txB; x++) {
            const px = x + 0.5 - ax;
            let t = (px * dx + py * dy) * inv;
            t = t < 0 ? 0 : t > 1 ? 1 : t;
            const ex = px - t * dx;
            const ey = py - t * dy;
            const d2 = ex * ex + ey * ey;
            if (d2 >= R2) continue;
            const cov = lut[(d2 * lutScale) | 0] * (s0 + ds * t);
            if (cov <= 0) continue;
            const i = row + x;
            if (erase) {
              const v = (orig[orow + x] * (1 - cov) + 0.5) | 0;
              if (v < mask[i]) mask[i] = v;
            } else {
              const v = (255 * cov + 0.5) | 0;
              if (v > mask[i]) mask[i] = v;
            }
          }
        }
      }
    }
    this.dirty.add(x0, y0, x1, y1);
    this.stats.segments.push(performance.now() - t0);
    if (this.stats.segments.length > 5000) this.stats.segments.splice(0, 2500);
    this._requestFrame();
  }

  /** Fill a polygon (image coordinates) with anti-aliased edges; erase lowers instead. */
  fillPolygon(points, strength, erase) {
    if (points.length < 3) return false;
    let minX = Infinity;
    let minY = Infinity;
    let maxX = -Infinity;
    let maxY = -Infinity;
    for (const [x, y] of points) {
      minX = Math.min(minX, x);
      minY = Math.min(minY, y);
      maxX = Math.max(maxX, x);
      maxY = Math.max(maxY, y);
    }
    const x0 = clamp(Math.floor(minX), 0, this.width);
    const y0 = clamp(Math.floor(minY), 0, this.height);
    const x1 = clamp(Math.ceil(maxX) + 1, 0, this.width);
    const y1 = clamp(Math.ceil(maxY) + 1, 0, this.height);
    if (x1 <= x0 || y1 <= y0) return false;
    const w = x1 - x0;
    const h = y1 - y0;
    const canvas = new OffscreenCanvas(w, h);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.beginPath();
    ctx.moveTo(points[0][0] - x0, points[0][1] - y0);
    for (let i = 1; i < points.length; i++) ctx.lineTo(points[i][0] - x0, points[i][1] - y0);
    ctx.closePath();
    ctx.fillStyle = "#000";
    ctx.fill("evenodd");
    const alpha = ctx.getImageData(0, 0, w, h).data;
    this._beginOp(erase ? "lasso-erase" : "lasso");
    this._touch(x0, y0, x1, y1);
    const mask = this.mask;
    const W = this.width;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const a = alpha[(y * w + x) * 4 + 3];
        if (!a) continue;
        const cov = (a / 255) * strength;
        const i = (y + y0) * W + x + x0;
        if (erase) {
          const v = (mask[i] * (1 - cov) + 0.5) | 0;
          if (v < mask[i]) mask[i] = v;
        } else {
          const v = (255 * cov + 0.5) | 0;
          if (v > mask[i]) mask[i] = v;
        }
      }
    }
    this.dirty.add(x0, y0, x1, y1);
    this._requestFrame();
    return this._endOp();
  }

  // --- drawing to screen -------------------------------------------------------------------

  _requestFull() {
    this.fullRedraw = true;
    this._requestFrame();
  }

  _requestFrame() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      this.flush();
    });
  }

  // --- display window (the image shown under the mask) --------------------------------------

  /** Show another rendering of the same image (e.g. a new display window); the mask is untouched. */
  setImage(image) {
    this.image = image;
    this._small = null;
    this.fullRedraw = true;
    this._requestFrame();
  }

  /** Bring the overlay and the screen up to date now (normally called once per frame). */
  flush() {
    const t0 = performance.now();
    if (!this.dirty.empty) {
      this._updateOverlay(this.dirty.x0, this.dirty.y0, this.dirty.x1, this.dirty.y1);
      if (!this.fullRedraw) this._drawMaskRect(this.dirty.x0, this.dirty.y0, this.dirty.x1, this.dirty.y1);
      this.dirty.reset();
    }
    if (this.fullRedraw) {
      this.fullRedraw = false;
      this._drawImage();
      this._drawMaskRect(0, 0, this.width, this.height);
      this._drawUi();
    }
    this.stats.frames.push(performance.now() - t0);
    if (this.stats.frames.length > 5000) this.stats.frames.splice(0, 2500);
  }

  *_tilesIn(x0, y0, x1, y1) {
    for (const t of this.overlayTiles) {
      const ax = Math.max(x0, t.x);
      const ay = Math.max(y0, t.y);
      const bx = Math.min(x1, t.x + t.w);
      const by = Math.min(y1, t.y + t.h);
      if (bx > ax && by > ay) yield [t, ax, ay, bx, by];
    }
  }

  _updateOverlay(x0, y0, x1, y1) {
    const lut = OVERLAY_LUT;
    const mask = this.mask;
    const W = this.width;
    for (const [t, ax, ay, bx, by] of this._tilesIn(x0, y0, x1, y1)) {
      const w = bx - ax;
      const h = by - ay;
      const img = new ImageData(w, h);
      const px = new Uint32Array(img.data.buffer);
      for (let y = 0; y < h; y++) {
        const src = (y + ay) * W + ax;
        const dst = y * w;
        for (let x = 0; x < w; x++) px[dst + x] = lut[mask[src + x]];
      }
      t.ctx.putImageData(img, ax - t.x, ay - t.y);
    }
  }

  _setViewTransform(ctx) {
    const { scale, x, y } = this.view;
    const d = this.dpr;
    ctx.setTransform(d * scale, 0, 0, d * scale, d * x, d * y);
    ctx.imageSmoothingEnabled = scale < 2;
  }

  _drawImage() {
    const ctx = this.imageCtx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#111318";
    ctx.fillRect(0, 0, this.imageCanvas.width, this.imageCanvas.height);
    this._setViewTransform(ctx);
    const src = this._imageForScale();
    ctx.drawImage(src, 0, 0, this.width, this.height);
  }

  /** A downscaled copy when zoomed far out: drawing a 4096^2 image per pan is needlessly slow. */
  _imageForScale() {
    const onScreen = Math.max(this.width, this.height) * this.view.scale * this.dpr;
    if (onScreen > 1536 || Math.max(this.width, this.height) <= 2048) return this.image;
    if (!this._small) {
      const k = 2048 / Math.max(this.width, this.height);
      const c = new OffscreenCanvas(Math.round(this.width * k), Math.round(this.height * k));
      const ctx = c.getContext("2d");
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(this.image, 0, 0, c.width, c.height);
      this._small = c;
    }
    return this._small;
  }

  _drawMaskRect(x0, y0, x1, y1) {
    const ctx = this.maskCtx;
    this._setViewTransform(ctx);
    // one pixel of margin for the resampling filter at the rectangle's edge
    const ax = Math.max(0, x0 - 1);
    const ay = Math.max(0, y0 - 1);
    const bx = Math.min(this.width, x1 + 1);
    const by = Math.min(this.height, y1 + 1);
    ctx.clearRect(ax, ay, bx - ax, by - ay);
    for (const [t, cx, cy, dx, dy] of this._tilesIn(ax, ay, bx, by)) {
      ctx.drawImage(t.canvas, cx - t.x, cy - t.y, dx - cx, dy - cy, cx, cy, dx - cx, dy - cy);
    }
  }

  _drawUi() {
    const ctx = this.uiCtx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.uiCanvas.width, this.uiCanvas.height);
    if (!this.lasso || !this.lasso.points.length) return;
    const d = this.dpr;
    const pts = this.lasso.points.map(([x, y]) => [
      (x * this.view.scale + this.view.x) * d,
      (y * this.view.scale + this.view.y) * d,
    ]);
    if (this.lasso.hover && !this.lasso.dragging) {
      const [hx, hy] = this.lasso.hover;
      pts.push([(hx * this.view.scale + this.view.x) * d, (hy * this.view.scale + this.view.y) * d]);
    }
    ctx.lineWidth = 1.5 * d;
    ctx.beginPath();
    ctx.moveTo(pts[0][0], pts[0][1]);
    for (const [x, y] of pts.slice(1)) ctx.lineTo(x, y);
    ctx.closePath();
    ctx.fillStyle = this.tool === "lasso" && this.lasso.erase ? "rgba(80,180,255,0.18)" : "rgba(255,200,60,0.18)";
    ctx.fill();
    ctx.setLineDash([6 * d, 4 * d]);
    ctx.strokeStyle = "#000";
    ctx.stroke();
    ctx.lineDashOffset = 6 * d;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
    ctx.setLineDash([]);
    // first vertex: click it to close a polygon
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.arc(pts[0][0], pts[0][1], 4 * d, 0, Math.PI * 2);
    ctx.fill();
  }

  _updateCursor() {
    const el = this.cursorEl;
    if (!this.lastPointer || this.tool === "lasso" || this.spaceDown || this.panning) {
      el.style.display = "none";
      return;
    }
    const d = Math.max(2, this.size * this.view.scale);
    const [sx, sy] = this.lastPointer;
    el.style.display = "block";
    el.style.width = `${d}px`;
    el.style.height = `${d}px`;
    el.style.transform = `translate(${sx - d / 2}px, ${sy - d / 2}px)`;
    el.classList.toggle("eraser", this.tool === "eraser");
  }

  // --- pointer input -----------------------------------------------------------------------

  _bindEvents() {
    const s = this.stage;
    s.addEventListener("pointerdown", (e) => this._onDown(e));
    s.addEventListener("pointermove", (e) => this._onMove(e));
    s.addEventListener("pointerup", (e) => this._onUp(e));
    s.addEventListener("pointercancel", (e) => this._onUp(e));
    s.addEventListener("pointerleave", () => {
      this.lastPointer = null;
      this._updateCursor();
    });
    s.addEventListener("dblclick", (e) => {
      if (this.tool === "lasso") {
        e.preventDefault();
        this.closeLasso();
      }
    });
    s.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const r = s.getBoundingClientRect();
        const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
        this.zoomAt(Math.exp(-delta * 0.0015), e.clientX - r.left, e.clientY - r.top);
      },
      { passive: false },
    );
    s.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  setSpace(down) {
    this.spaceDown = down;
    this.stage.classList.toggle("panning", down);
    this._updateCursor();
  }

  _local(e) {
    const r = this.stage.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  _pressure(e) {
    // Mouse reports 0.5 whenever a button is down; only a pen's pressure means anything.
    if (e.pointerType === "pen" && e.pressure > 0) return e.pressure;
    return 1;
  }

  _onDown(e) {
    this.stage.focus({ preventScroll: true });
    const [sx, sy] = this._local(e);
    this.lastPointer = [sx, sy];
    if (e.button === 1 || (e.button === 0 && this.spaceDown)) {
      e.preventDefault();
      this.panning = { sx, sy, vx: this.view.x, vy: this.view.y, id: e.pointerId };
      this.stage.setPointerCapture(e.pointerId);
      this.stage.classList.add("grabbing");
      this._updateCursor();
      return;
    }
    if (e.button !== 0 && e.button !== 2) return;
    e.preventDefault();
    this.stage.setPointerCapture(e.pointerId);
    const [ix, iy] = this.toImage(e.clientX, e.clientY);
    // right button paints with the opposite tool (brush <-> eraser), as in many editors
    const opposite = e.button === 2;
    if (this.tool === "lasso") {
      const erase = opposite || e.altKey;
      if (!this.lasso) this.lasso = { points: [], dragging: false, erase };
      const pts = this.lasso.points;
      if (pts.length >= 3) {
        const [fx, fy] = pts[0];
        const near = Math.hypot((fx - ix) * this.view.scale, (fy - iy) * this.view.scale) < 8;
        if (near) {
          this.closeLasso();
          return;
        }
      }
      pts.push([ix, iy]);
      this.lasso.down = { sx, sy, id: e.pointerId, count: pts.length };
      this._drawUi();
      return;
    }
    const erase = (this.tool === "eraser") !== opposite;
    const s = this.strength * this._pressure(e);
    this._beginOp(erase ? "erase" : "brush");
    this.stroke = { x: ix, y: iy, s, erase, id: e.pointerId };
    this.paintSegment(ix, iy, ix, iy, s, s, erase);
    this._updateCursor();
  }

  _onMove(e) {
    const [sx, sy] = this._local(e);
    this.lastPointer = [sx, sy];
    if (this.panning) {
      this.view.x = this.panning.vx + (sx - this.panning.sx);
      this.view.y = this.panning.vy + (sy - this.panning.sy);
      this._viewChanged();
      return;
    }
    this._updateCursor();
    if (this.lasso) {
      const [ix, iy] = this.toImage(e.clientX, e.clientY);
      const down = this.lasso.down;
      if (down && e.pointerId === down.id && (e.buttons & 1 || e.buttons & 2)) {
        if (!this.lasso.dragging && Math.hypot(sx - down.sx, sy - down.sy) > 4) this.lasso.dragging = true;
        if (this.lasso.dragging) {
          const last = this.lasso.points[this.lasso.points.length - 1];
          if (Math.hypot((ix - last[0]) * this.view.scale, (iy - last[1]) * this.view.scale) >= 2)
            this.lasso.points.push([ix, iy]);
        }
      }
      this.lasso.hover = [ix, iy];
      this._drawUi();
      return;
    }
    if (!this.stroke || e.pointerId !== this.stroke.id) return;
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const [ix, iy] = this.toImage(ev.clientX, ev.clientY);
      const s = this.strength * this._pressure(ev);
      const st = this.stroke;
      if (ix === st.x && iy === st.y) continue;
      this.paintSegment(st.x, st.y, ix, iy, st.s, s, st.erase);
      st.x = ix;
      st.y = iy;
      st.s = s;
    }
  }

  _onUp(e) {
    if (this.panning && e.pointerId === this.panning.id) {
      this.panning = null;
      this.stage.classList.remove("grabbing");
      this._updateCursor();
      return;
    }
    if (this.lasso && this.lasso.down && e.pointerId === this.lasso.down.id) {
      const dragged = this.lasso.dragging;
      this.lasso.down = null;
      this.lasso.dragging = false;
      if (dragged) this.closeLasso(); // a freehand lasso closes on release
      return;
    }
    if (this.stroke && e.pointerId === this.stroke.id) {
      this.stroke = null;
      this._endOp();
    }
  }

  get lassoOpen() {
    return !!(this.lasso && this.lasso.points.length);
  }

  closeLasso() {
    if (!this.lasso) return false;
    const { points, erase } = this.lasso;
    this.lasso = null;
    this._drawUi();
    return this.fillPolygon(points, this.strength, erase);
  }

  cancelLasso() {
    if (!this.lasso) return;
    this.lasso = null;
    this._drawUi();
  }

  destroy() {
    this._resizeObserver.disconnect();
    this.stage.replaceChildren();
  }
}
