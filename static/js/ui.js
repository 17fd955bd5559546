// Small shared pieces of the interface: toasts, heatmap colouring, formatting.

import { errorText } from "./api.js";
import { OVERLAY_LUT } from "./painter.js";

let toastBox;
export function toast(message, kind = "info", ms = 4500) {
  if (!toastBox) {
    toastBox = document.createElement("div");
    toastBox.className = "toasts";
    toastBox.setAttribute("role", "status");
    toastBox.setAttribute("aria-live", "polite");
    document.body.appendChild(toastBox);
  }
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.textContent = message;
  toastBox.appendChild(el);
  setTimeout(() => el.remove(), ms);
  return el;
}

export function toastError(err, prefix = "") {
  console.error(err);
  toast(`${prefix}${errorText(err)}`, "error", 8000);
}

/** Colour a grayscale map (URL or Blob) with the saliency palette into a canvas with alpha. */
export async function colorizeMap(source) {
  let blob = source;
  if (typeof source === "string") {
    const res = await fetch(source, { credentials: "same-origin" });
    if (!res.ok) throw new Error(`HTTP ${res.status} for ${source}`);
    blob = await res.blob();
  }
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = new Uint32Array(img.data.buffer);
  for (let i = 0; i < px.length; i++) px[i] = OVERLAY_LUT[img.data[i * 4]];
  ctx.putImageData(img, 0, 0);
  canvas.className = "overlay-layer";
  canvas.setAttribute("aria-hidden", "true");
  return canvas;
}

export function base64ToBlob(b64, type = "image/png") {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

export function pct(x, digits = 0) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : `${(100 * x).toFixed(digits)}%`;
}

export function fmtNum(x, digits = 3) {
  return typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(digits)) : "–";
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** JSON boot data a template embedded in <script type="application/json" id="...">. */
export function bootData(id = "boot") {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : {};
}

/** True when a key event belongs to a text field and page shortcuts must leave it alone. */
export function isTyping(e) {
  const t = e.target;
  if (!(t instanceof HTMLElement)) return false;
  if (t.isContentEditable) return true;
  if (t.tagName === "TEXTAREA" || t.tagName === "SELECT") return true;
  if (t.tagName === "INPUT") return !["range", "checkbox", "radio", "button", "submit"].includes(t.type);
  return false;
}
