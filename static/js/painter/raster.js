// Rasterising brush, eraser and lasso operations into the full-resolution 8-bit mask.
//
// Stroke semantics (graded saliency): the brush raises pixels towards strength x coverage (max, so
// overlapping passes of one stroke never exceed the chosen level); the eraser lowers pixels to
// original x (1 - strength x coverage) within one stroke, reading the stroke-start value from the
// undo snapshot. Every function snapshots what it changes through the open MaskHistory operation.

import { TILE } from "./history.js";

export const FALLOFF_STEPS = 1024;

export function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/** Coverage as a function of (distance / radius)^2, sampled: smoothstep from `hardness` to the rim. */
export function makeFalloff(hardness) {
  const lut = new Float32Array(FALLOFF_STEPS + 1);
  const h = Math.min(hardness, 0.999);
  for (let i = 0; i <= FALLOFF_STEPS; i++) {
    const r = Math.sqrt(i / FALLOFF_STEPS);
    if (r <= h) lut[i] = 1;
    else {
      const u = (r - h) / (1 - h);
      lut[i] = 1 - u * u * (3 - 2 * u);
    }
  }
  return lut;
}

/**
 * Paint one stroke segment from (ax, ay) to (bx, by) in image pixels as a capsule (exact distance
 * to the segment, so no dab spacing artefacts); s0, s1 strengths 0..1 at its ends.
 * @param {import("./history.js").MaskHistory} history with an operation open
 * @param {Float32Array} falloff from makeFalloff
 * @param {number} diameter brush diameter in image pixels
 * @returns {number[] | null} the changed rectangle [x0, y0, x1, y1], null when off the image
 */
export function paintSegment(history, falloff, diameter, ax, ay, bx, by, s0, s1, erase) {
  const { mask, width: W, height: H, tilesX } = history;
  const R = diameter / 2;
  const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - R));
  const y0 = Math.max(0, Math.floor(Math.min(ay, by) - R));
  const x1 = Math.min(W, Math.ceil(Math.max(ax, bx) + R) + 1);
  const y1 = Math.min(H, Math.ceil(Math.max(ay, by) + R) + 1);
  if (x1 <= x0 || y1 <= y0) return null;
  history.touch(x0, y0, x1, y1);
  const dx = bx - ax;
  const dy = by - ay;
  const len2 = dx * dx + dy * dy;
  const inv = len2 > 1e-9 ? 1 / len2 : 0;
  const R2 = Math.max(R * R, 0.25);
  const lutScale = FALLOFF_STEPS / R2;
  const lut = falloff;
  const ds = s1 - s0;
  const before = history.snapshots;
  // Walk tile by tile so the eraser can read the stroke-start value from the undo snapshot.
  const tx0 = Math.floor(x0 / TILE);
  const tx1 = Math.floor((x1 - 1) / TILE);
  const ty0 = Math.floor(y0 / TILE);
  const ty1 = Math.floor((y1 - 1) / TILE);
  for (let ty = ty0; ty <= ty1; ty++) {
    const tyA = Math.max(y0, ty * TILE);
    const tyB = Math.min(y1, ty * TILE + TILE);
    for (let tx = tx0; tx <= tx1; tx++) {
      const key = ty * tilesX + tx;
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
  return [x0, y0, x1, y1];
}

/**
 * Anti-aliased coverage of a polygon (image coordinates, even-odd rule) clipped to the image.
 * @returns {{x0: number, y0: number, w: number, h: number, alpha: Uint8ClampedArray} | null}
 *   RGBA data whose alpha channel is the coverage; null when the polygon misses the image
 */
export function polygonCoverage(points, width, height) {
  if (points.length < 3) return null;
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
  const x0 = clamp(Math.floor(minX), 0, width);
  const y0 = clamp(Math.floor(minY), 0, height);
  const x1 = clamp(Math.ceil(maxX) + 1, 0, width);
  const y1 = clamp(Math.ceil(maxY) + 1, 0, height);
  if (x1 <= x0 || y1 <= y0) return null;
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
  return { x0, y0, w, h, alpha: ctx.getImageData(0, 0, w, h).data };
}

/**
 * Raise (or, erasing, lower) the mask under a polygonCoverage result by strength x coverage.
 * @returns {number[]} the changed rectangle [x0, y0, x1, y1]
 */
export function fillCoverage(history, area, strength, erase) {
  const { x0, y0, w, h, alpha } = area;
  history.touch(x0, y0, x0 + w, y0 + h);
  const mask = history.mask;
  const W = history.width;
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
  return [x0, y0, x0 + w, y0 + h];
}
