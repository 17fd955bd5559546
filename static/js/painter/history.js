// Undo/redo for the painter's full-resolution mask, in 128x128 tiles: an operation snapshots a
// tile the first time it changes it, so a stroke costs memory in proportion to what it touched,
// not to the image. Keeps at least 50 steps, at most 200, and drops the oldest beyond 384 MiB.

export const TILE = 128;
const MIN_UNDO_STEPS = 50;
const MAX_UNDO_STEPS = 200;
const MAX_UNDO_BYTES = 384 * 1024 * 1024;

export class MaskHistory {
  /**
   * @param {Uint8Array} mask the mask (width x height, row-major) that operations change in place
   * @param {number} width
   * @param {number} height
   * @param {(x0: number, y0: number, x1: number, y1: number) => void} onWrite called with each
   *   rectangle that undo/redo rewrote, so the display can redraw it
   */
  constructor(mask, width, height, onWrite) {
    this.mask = mask;
    this.width = width;
    this.height = height;
    this.tilesX = Math.ceil(width / TILE);
    this.tilesY = Math.ceil(height / TILE);
    this.onWrite = onWrite;
    this.undoStack = [];
    this.redoStack = [];
    this.undoBytes = 0;
    this.op = null; // {kind, before: Map<tileKey, Uint8Array>, after, bytes} while one is open
  }

  /** Start an operation; tiles touched from now on are snapshotted once. */
  begin(kind) {
    this.op = { kind, before: new Map(), after: null, bytes: 0 };
  }

  /** The open operation's snapshots (tile key -> content before the operation). */
  get snapshots() {
    return this.op.before;
  }

  /** Snapshot (once per operation) every tile overlapping the half-open rectangle. */
  touch(x0, y0, x1, y1) {
    const op = this.op;
    const tx0 = Math.max(0, Math.floor(x0 / TILE));
    const ty0 = Math.max(0, Math.floor(y0 / TILE));
    const tx1 = Math.min(this.tilesX - 1, Math.floor((x1 - 1) / TILE));
    const ty1 = Math.min(this.tilesY - 1, Math.floor((y1 - 1) / TILE));
    for (let ty = ty0; ty <= ty1; ty++) {
      for (let tx = tx0; tx <= tx1; tx++) {
        const key = ty * this.tilesX + tx;
        if (!op.before.has(key)) op.before.set(key, this.readTile(tx, ty));
      }
    }
  }

  /** [tx, ty, x0, y0, x1, y1] of a tile key (pixel bounds half-open). */
  tileBounds(key) {
    const tx = key % this.tilesX;
    const ty = Math.floor(key / this.tilesX);
    const x0 = tx * TILE;
    const y0 = ty * TILE;
    return [tx, ty, x0, y0, Math.min(this.width, x0 + TILE), Math.min(this.height, y0 + TILE)];
  }

  readTile(tx, ty) {
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
    const [, , x0, y0, x1, y1] = this.tileBounds(key);
    const w = x1 - x0;
    for (let y = y0; y < y1; y++) this.mask.set(data.subarray((y - y0) * w, (y - y0 + 1) * w), y * this.width + x0);
    this.onWrite(x0, y0, x1, y1);
  }

  /**
   * Close the open operation. Tiles that ended unchanged are dropped; an operation that changed
   * nothing leaves no undo step. Returns the operation's kind when it made a step, else null.
   */
  end() {
    const op = this.op;
    this.op = null;
    if (!op) return null;
    const after = new Map();
    let bytes = 0;
    for (const [key, before] of op.before) {
      const [tx, ty] = this.tileBounds(key);
      const now = this.readTile(tx, ty);
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
    if (!after.size) return null;
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
    return op.kind;
  }

  /** Restore the mask from before the last step; false when there is none. */
  undo() {
    const op = this.undoStack.pop();
    if (!op) return false;
    for (const [key, data] of op.before) this._writeTile(key, data);
    this.redoStack.push(op);
    return true;
  }

  /** Re-apply the last undone step; false when there is none. */
  redo() {
    const op = this.redoStack.pop();
    if (!op) return false;
    for (const [key, data] of op.after) this._writeTile(key, data);
    this.undoStack.push(op);
    return true;
  }

  /** Forget every step (the mask was loaded, not edited). */
  reset() {
    this.undoStack = [];
    this.redoStack = [];
    this.undoBytes = 0;
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }
  get canRedo() {
    return this.redoStack.length > 0;
  }
}
