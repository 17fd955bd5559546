// Display window (window/level) of the painter: which rendering of the stored pixels is shown.
//
// The server renders `display.png?center=C&width=W&invert=0|1` (DICOM's linear window over the
// full-precision pixels). While a drag changes the window, an SVG colour transform previews the
// change on the current rendering at once; the exact rendering replaces it when the drag ends.
// The mask is never touched: it stays at the image's full resolution whatever is shown.

const SENSITIVITY = 1 / 400; // of the full value range per screen pixel dragged

/**
 * @param {object} opts
 * @param {import("./painter.js").Painter} opts.painter
 * @param {object} opts.image the boot image: display_url, pixels {default_window, header_window, auto_window, full_window}
 * @param {HTMLElement} opts.stage the painter's stage
 */
export function initWindowing({ painter, image, stage }) {
  const px = image.pixels || {};
  const presets = {
    header: px.header_window || px.default_window,
    auto: px.auto_window || px.default_window,
    full: px.full_window || px.default_window,
  };
  const fallback = { center: 128, width: 256 };
  const initial = px.default_window || fallback;
  const range = (presets.full || fallback).width;
  const $ = (id) => document.getElementById(id);
  const centerInput = $("wl-center");
  const widthInput = $("wl-width");
  const invertInput = $("wl-invert");
  const modeButton = $("wl-mode");
  const readout = $("wl-readout");
  const filter = document.getElementById("wl-preview");
  const funcs = filter ? [...filter.querySelectorAll("feFuncR, feFuncG, feFuncB")] : [];

  const state = {
    center: initial.center,
    width: initial.width,
    invert: false,
    shown: { center: initial.center, width: initial.width, invert: false }, // what the image is
    mode: false, // W: left-drag changes the window instead of painting
    drag: null,
    seq: 0,
  };
  if (!presets.header || !px.header_window) $("wl-preset-header")?.setAttribute("title", "No window in the file: the default window");

  function fmt(v) {
    return Math.abs(v) >= 100 ? String(Math.round(v)) : String(Math.round(v * 100) / 100);
  }

  function syncFields() {
    if (document.activeElement !== centerInput) centerInput.value = fmt(state.center);
    if (document.activeElement !== widthInput) widthInput.value = fmt(state.width);
    invertInput.checked = state.invert;
    modeButton.setAttribute("aria-pressed", String(state.mode));
    stage.dataset.windowing = state.mode ? "on" : "off";
    readout.textContent = `C ${fmt(state.center)} · W ${fmt(state.width)}${state.invert ? " · inverted" : ""}`;
    stage.dataset.window = `${fmt(state.center)},${fmt(state.width)},${state.invert ? 1 : 0}`;
  }

  /** Preview: map the shown rendering to the requested window with a linear colour transform. */
  function preview() {
    const s0 = Math.max(state.shown.width - 1, 1e-6);
    const s1 = Math.max(state.width - 1, 1e-6);
    const lo0 = state.shown.center - 0.5 - s0 / 2;
    const lo1 = state.center - 0.5 - s1 / 2;
    let slope = s0 / s1;
    let intercept = (lo0 - lo1) / s1;
    if (state.shown.invert) intercept += slope; // undo the shown inversion: d = 1 - shown
    if (state.shown.invert) slope = -slope;
    if (state.invert) {
      slope = -slope;
      intercept = 1 - intercept;
    }
    for (const f of funcs) {
      f.setAttribute("slope", String(slope));
      f.setAttribute("intercept", String(intercept));
    }
    painter.imageCanvas.style.filter = funcs.length ? "url(#wl-preview)" : "";
  }

  function clearPreview() {
    painter.imageCanvas.style.filter = "";
  }

  function url() {
    const q = new URLSearchParams({ center: String(state.center), width: String(state.width), invert: state.invert ? "1" : "0" });
    return `${image.display_url}?${q}`;
  }

  /** Load the exact rendering of the current window and show it (the latest request wins). */
  async function render() {
    const seq = ++state.seq;
    const wanted = { center: state.center, width: state.width, invert: state.invert };
    stage.dataset.windowLoading = "true";
    const img = new Image();
    img.decoding = "async";
    img.src = url();
    try {
      await img.decode();
    } catch (err) {
      if (seq === state.seq) stage.dataset.windowLoading = "error";
      console.error("display window", err);
      return;
    }
    if (seq !== state.seq) return;
    painter.setImage(img);
    state.shown = wanted;
    clearPreview();
    stage.dataset.windowLoading = "false";
  }

  function setWindow(center, width, invert = state.invert, { now = true } = {}) {
    if (!Number.isFinite(center) || !Number.isFinite(width) || width <= 0) return;
    state.center = center;
    state.width = width;
    state.invert = invert;
    syncFields();
    preview();
    if (now) render();
  }

  function applyPreset(name) {
    const p = presets[name];
    if (p) setWindow(p.center, p.width);
  }

  function setMode(on) {
    state.mode = on;
    syncFields();
  }

  // --- controls ---------------------------------------------------------------------------------

  for (const input of [centerInput, widthInput]) {
    input.addEventListener("change", () => setWindow(Number(centerInput.value), Number(widthInput.value)));
  }
  invertInput.addEventListener("change", () => setWindow(state.center, state.width, invertInput.checked));
  modeButton.addEventListener("click", () => setMode(!state.mode));
  for (const name of ["header", "auto", "full"]) {
    $(`wl-preset-${name}`)?.addEventListener("click", () => applyPreset(name));
  }

  // --- drag gesture: in W mode, left-drag; anywhere, Ctrl+right-drag. Horizontal = width, vertical = level.
  const wantsDrag = (e) => (state.mode && e.button === 0 && !painter.spaceDown) || (e.button === 2 && (e.ctrlKey || e.metaKey));
  stage.addEventListener(
    "pointerdown",
    (e) => {
      if (!wantsDrag(e)) return;
      e.stopPropagation(); // the painter must not paint this drag
      e.preventDefault();
      stage.setPointerCapture?.(e.pointerId);
      state.drag = { id: e.pointerId, x: e.clientX, y: e.clientY, center: state.center, width: state.width };
    },
    { capture: true },
  );
  stage.addEventListener(
    "pointermove",
    (e) => {
      const d = state.drag;
      if (!d || e.pointerId !== d.id) return;
      e.stopPropagation();
      const k = range * SENSITIVITY;
      const width = Math.max(1, d.width + (e.clientX - d.x) * k);
      const center = d.center - (e.clientY - d.y) * k; // drag up: brighter
      setWindow(center, width, state.invert, { now: false });
    },
    { capture: true },
  );
  const endDrag = (e) => {
    const d = state.drag;
    if (!d || e.pointerId !== d.id) return;
    e.stopPropagation();
    state.drag = null;
    render();
  };
  stage.addEventListener("pointerup", endDrag, { capture: true });
  stage.addEventListener("pointercancel", endDrag, { capture: true });

  syncFields();

  return {
    /** Keyboard shortcuts of the display window; true when the key was one of them. */
    handleKey(e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return false;
      switch (e.key) {
        case "w":
        case "W":
          setMode(!state.mode);
          return true;
        case "i":
        case "I":
          setWindow(state.center, state.width, !state.invert);
          return true;
        case "v":
        case "V": {
          // cycle the presets: header (the file's window) -> auto (percentiles) -> full range
          const order = ["header", "auto", "full"];
          state.preset = order[(order.indexOf(state.preset ?? "header") + 1) % order.length];
          applyPreset(state.preset);
          return true;
        }
        case "Escape":
          if (state.mode) {
            setMode(false);
            return true;
          }
          return false;
        default:
          return false;
      }
    },
    get window() {
      return { center: state.center, width: state.width, invert: state.invert };
    },
    setWindow,
    applyPreset,
  };
}
