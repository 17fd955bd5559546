// Drawing the painter on screen: two viewport-sized canvases (image, mask) and a lasso canvas
// under a CSS-sized cursor ring. The coloured overlay lives in full-resolution 512x512
// OffscreenCanvas tiles updated only over dirty rectangles, and the on-screen mask canvas redraws
// only the dirty rectangle, once per animation frame.

const OVERLAY_TILE = 512;

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

/** A half-open rectangle that grows to cover everything added since the last reset. */
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

export class Renderer {
  /**
   * @param {HTMLElement} stage the element the canvases fill
   * @param {{mask: Uint8Array, width: number, height: number, image: CanvasImageSource,
   *   view: {scale: number, x: number, y: number}}} model what is drawn; read at every frame
   * @param {{segments: number[], frames: number[]}} stats frame timings are appended here
   */
  constructor(stage, model, stats) {
    this.stage = stage;
    this.model = model;
    this.stats = stats;
    this.dpr = window.devicePixelRatio || 1;
    this.cssW = undefined;
    this.cssH = undefined;
    this.dirty = new Rect();
    this.fullRedraw = true;
    this.frameRequested = false;
    this.lasso = null; // what drawLasso last drew, redrawn with the view
    this._small = null;

    this.imageCanvas = document.createElement("canvas");
    this.maskCanvas = document.createElement("canvas");
    this.uiCanvas = document.createElement("canvas");
    for (const c of [this.imageCanvas, this.maskCanvas, this.uiCanvas]) {
      c.className = "painter-layer";
      c.setAttribute("aria-hidden", "true");
      stage.appendChild(c);
    }
    this.maskCanvas.classList.add("painter-mask");
    this.cursorEl = document.createElement("div");
    this.cursorEl.className = "brush-cursor";
    this.cursorEl.setAttribute("aria-hidden", "true");
    stage.appendChild(this.cursorEl);
    this.imageCtx = this.imageCanvas.getContext("2d", { alpha: false });
    this.maskCtx = this.maskCanvas.getContext("2d");
    this.uiCtx = this.uiCanvas.getContext("2d");

    // The coloured overlay in 512x512 tiles: updating one tile never forces the browser to copy
    // a whole 4096x4096 canvas that the screen canvas still references (copy-on-write).
    const { width, height } = model;
    this.overlayTiles = [];
    for (let y = 0; y < height; y += OVERLAY_TILE) {
      for (let x = 0; x < width; x += OVERLAY_TILE) {
        const c = new OffscreenCanvas(Math.min(OVERLAY_TILE, width - x), Math.min(OVERLAY_TILE, height - y));
        this.overlayTiles.push({ x, y, w: c.width, h: c.height, canvas: c, ctx: c.getContext("2d") });
      }
    }
  }

  setOpacity(o) {
    this.maskCanvas.style.opacity = String(o);
  }

  setMaskVisible(visible) {
    this.maskCanvas.hidden = !visible;
  }

  /**
   * Size the canvases to the stage (CSS px x devicePixelRatio). Returns the old CSS size when it
   * changed, so the caller can keep the view centred; null when nothing changed.
   */
  resize() {
    const r = this.stage.getBoundingClientRect();
    const w = Math.max(1, Math.round(r.width));
    const h = Math.max(1, Math.round(r.height));
    if (this.cssW === w && this.cssH === h) return null;
    const old = [this.cssW, this.cssH];
    this.cssW = w;
    this.cssH = h;
    this.dpr = window.devicePixelRatio || 1;
    for (const c of [this.imageCanvas, this.maskCanvas, this.uiCanvas]) {
      c.width = Math.round(w * this.dpr);
      c.height = Math.round(h * this.dpr);
      c.style.width = `${w}px`;
      c.style.height = `${h}px`;
    }
    this.requestFull();
    return old;
  }

  /** Mark image pixels [x0, x1) x [y0, y1) as changed; drawn at the next frame. */
  invalidate(x0, y0, x1, y1) {
    this.dirty.add(x0, y0, x1, y1);
    this.requestFrame();
  }

  /** A new image rendering (same size): drop the downscaled copy and redraw everything. */
  imageChanged() {
    this._small = null;
    this.requestFull();
  }

  requestFull() {
    this.fullRedraw = true;
    this.requestFrame();
  }

  requestFrame() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      this.flush();
    });
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
      this._drawMaskRect(0, 0, this.model.width, this.model.height);
      this.drawLasso(this.lasso);
    }
    const frames = this.stats.frames;
    frames.push(performance.now() - t0);
    if (frames.length > 5000) frames.splice(0, 2500);
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
    const { mask, width: W } = this.model;
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
    const { scale, x, y } = this.model.view;
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
    ctx.drawImage(this._imageForScale(), 0, 0, this.model.width, this.model.height);
  }

  /** A downscaled copy when zoomed far out: drawing a 4096^2 image per pan is needlessly slow. */
  _imageForScale() {
    const { width, height, image, view } = this.model;
    const onScreen = Math.max(width, height) * view.scale * this.dpr;
    if (onScreen > 1536 || Math.max(width, height) <= 2048) return image;
    if (!this._small) {
      const k = 2048 / Math.max(width, height);
      const c = new OffscreenCanvas(Math.round(width * k), Math.round(height * k));
      const ctx = c.getContext("2d");
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(image, 0, 0, c.width, c.height);
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
    const bx = Math.min(this.model.width, x1 + 1);
    const by = Math.min(this.model.height, y1 + 1);
    ctx.clearRect(ax, ay, bx - ax, by - ay);
    for (const [t, cx, cy, dx, dy] of this._tilesIn(ax, ay, bx, by)) {
      ctx.drawImage(t.canvas, cx - t.x, cy - t.y, dx - cx, dy - cy, cx, cy, dx - cx, dy - cy);
    }
  }

  /**
   * Draw the lasso being built (or clear it with null).
   * @param {{points: number[][], hover?: number[], dragging: boolean, erase: boolean} | null} lasso
   *   vertices in image pixels; `hover` is the pointer, drawn as a provisional vertex
   */
  drawLasso(lasso) {
    this.lasso = lasso;
    const ctx = this.uiCtx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.uiCanvas.width, this.uiCanvas.height);
    if (!lasso || !lasso.points.length) return;
    const d = this.dpr;
    const view = this.model.view;
    const pts = lasso.points.map(([x, y]) => [(x * view.scale + view.x) * d, (y * view.scale + view.y) * d]);
    if (lasso.hover && !lasso.dragging) {
      const [hx, hy] = lasso.hover;
      pts.push([(hx * view.scale + view.x) * d, (hy * view.scale + view.y) * d]);
    }
    ctx.lineWidth = 1.5 * d;
    ctx.beginPath();
    ctx.moveTo(pts[0][0], pts[0][1]);
    for (const [x, y] of pts.slice(1)) ctx.lineTo(x, y);
    ctx.closePath();
    ctx.fillStyle = lasso.erase ? "rgba(80,180,255,0.18)" : "rgba(255,200,60,0.18)";
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

  /**
   * Place the brush ring, `diameter` CSS px wide, centred on `pointer` (stage CSS px); hidden when
   * pointer is null.
   */
  drawCursor(pointer, diameter, eraser) {
    const el = this.cursorEl;
    if (!pointer) {
      el.style.display = "none";
      return;
    }
    const d = Math.max(2, diameter);
    const [sx, sy] = pointer;
    el.style.display = "block";
    el.style.width = `${d}px`;
    el.style.height = `${d}px`;
    el.style.transform = `translate(${sx - d / 2}px, ${sy - d / 2}px)`;
    el.classList.toggle("eraser", eraser);
  }
}
