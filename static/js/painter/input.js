// Pointer, wheel and Space-to-pan input on the painter's stage: turns events into strokes, lasso
// vertices, pans and zooms on the Painter. The right button paints with the opposite tool
// (brush <-> eraser); a pen's pressure scales strength; coalesced events keep fast strokes smooth.

export class PointerInput {
  /** @param {import("../painter.js").Painter} painter */
  constructor(painter) {
    this.painter = painter;
    this.stage = painter.stage;
    this.spaceDown = false;
    this.panning = null; // {sx, sy, vx, vy, id} while a pan drag is on
    this.stroke = null; // {x, y, s, erase, id} while a brush/eraser drag is on
    this.lasso = null; // {points: [[x,y]...], dragging, erase, down, hover} while one is open
    this.pointer = null; // last pointer position over the stage, stage CSS px

    const s = this.stage;
    s.addEventListener("pointerdown", (e) => this._onDown(e));
    s.addEventListener("pointermove", (e) => this._onMove(e));
    s.addEventListener("pointerup", (e) => this._onUp(e));
    s.addEventListener("pointercancel", (e) => this._onUp(e));
    s.addEventListener("pointerleave", () => {
      this.pointer = null;
      painter._updateCursor();
    });
    s.addEventListener("dblclick", (e) => {
      if (painter.tool === "lasso") {
        e.preventDefault();
        painter.closeLasso();
      }
    });
    s.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const r = s.getBoundingClientRect();
        const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
        painter.zoomAt(Math.exp(-delta * 0.0015), e.clientX - r.left, e.clientY - r.top);
      },
      { passive: false },
    );
    s.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  /** Whether the brush ring should be hidden (lasso, or panning / about to pan). */
  get cursorHidden() {
    return !this.pointer || this.painter.tool === "lasso" || this.spaceDown || !!this.panning;
  }

  setSpace(down) {
    this.spaceDown = down;
    this.stage.classList.toggle("panning", down);
  }

  /** Take the open lasso away (to fill or drop it); null when none is open. */
  takeLasso() {
    const lasso = this.lasso;
    this.lasso = null;
    return lasso;
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
    const p = this.painter;
    this.stage.focus({ preventScroll: true });
    const [sx, sy] = this._local(e);
    this.pointer = [sx, sy];
    if (e.button === 1 || (e.button === 0 && this.spaceDown)) {
      e.preventDefault();
      this.panning = { sx, sy, vx: p.view.x, vy: p.view.y, id: e.pointerId };
      this.stage.setPointerCapture(e.pointerId);
      this.stage.classList.add("grabbing");
      p._updateCursor();
      return;
    }
    if (e.button !== 0 && e.button !== 2) return;
    e.preventDefault();
    this.stage.setPointerCapture(e.pointerId);
    const [ix, iy] = p.toImage(e.clientX, e.clientY);
    const opposite = e.button === 2;
    if (p.tool === "lasso") {
      const erase = opposite || e.altKey;
      if (!this.lasso) this.lasso = { points: [], dragging: false, erase };
      const pts = this.lasso.points;
      if (pts.length >= 3) {
        const [fx, fy] = pts[0];
        const near = Math.hypot((fx - ix) * p.view.scale, (fy - iy) * p.view.scale) < 8;
        if (near) {
          p.closeLasso();
          return;
        }
      }
      pts.push([ix, iy]);
      this.lasso.down = { sx, sy, id: e.pointerId, count: pts.length };
      p.renderer.drawLasso(this.lasso);
      return;
    }
    const erase = (p.tool === "eraser") !== opposite;
    const s = p.strength * this._pressure(e);
    p._beginOp(erase ? "erase" : "brush");
    this.stroke = { x: ix, y: iy, s, erase, id: e.pointerId };
    p.paintSegment(ix, iy, ix, iy, s, s, erase);
    p._updateCursor();
  }

  _onMove(e) {
    const p = this.painter;
    const [sx, sy] = this._local(e);
    this.pointer = [sx, sy];
    if (this.panning) {
      p.view.x = this.panning.vx + (sx - this.panning.sx);
      p.view.y = this.panning.vy + (sy - this.panning.sy);
      p._viewChanged();
      return;
    }
    p._updateCursor();
    if (this.lasso) {
      const [ix, iy] = p.toImage(e.clientX, e.clientY);
      const down = this.lasso.down;
      if (down && e.pointerId === down.id && (e.buttons & 1 || e.buttons & 2)) {
        if (!this.lasso.dragging && Math.hypot(sx - down.sx, sy - down.sy) > 4) this.lasso.dragging = true;
        if (this.lasso.dragging) {
          const last = this.lasso.points[this.lasso.points.length - 1];
          if (Math.hypot((ix - last[0]) * p.view.scale, (iy - last[1]) * p.view.scale) >= 2)
            this.lasso.points.push([ix, iy]);
        }
      }
      this.lasso.hover = [ix, iy];
      p.renderer.drawLasso(this.lasso);
      return;
    }
    if (!this.stroke || e.pointerId !== this.stroke.id) return;
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const [ix, iy] = p.toImage(ev.clientX, ev.clientY);
      const s = p.strength * this._pressure(ev);
      const st = this.stroke;
      if (ix === st.x && iy === st.y) continue;
      p.paintSegment(st.x, st.y, ix, iy, st.s, s, st.erase);
      st.x = ix;
      st.y = iy;
      st.s = s;
    }
  }

  _onUp(e) {
    const p = this.painter;
    if (this.panning && e.pointerId === this.panning.id) {
      this.panning = null;
      this.stage.classList.remove("grabbing");
      p._updateCursor();
      return;
    }
    if (this.lasso && this.lasso.down && e.pointerId === this.lasso.down.id) {
      const dragged = this.lasso.dragging;
      this.lasso.down = null;
      this.lasso.dragging = false;
      if (dragged) p.closeLasso(); // a freehand lasso closes on release
      return;
    }
    if (this.stroke && e.pointerId === this.stroke.id) {
      this.stroke = null;
      p._endOp();
    }
  }
}
