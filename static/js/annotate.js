// The annotate page: wires the painter to the toolbar, the keyboard, labels, drafts and saving.

import { ApiError, api, errorText } from "./api.js";
import { deleteDraft, draftKey, loadDraft, saveDraft } from "./drafts.js";
import { Painter } from "./painter.js";
import { decodeGray, encodeGrayPNG } from "./png.js";
import { base64ToBlob, bootData, colorizeMap, fmtTime, isTyping, toast, toastError } from "./ui.js";
import { initWindowing } from "./windowing.js";

const boot = bootData();
const { image, project, user } = boot;
const stage = document.getElementById("stage");
const saveStateEl = document.getElementById("save-state");
const banner = document.getElementById("banner");
const key = draftKey(user.id, image.id);

const state = {
  label: boot.annotation ? boot.annotation.label : (image.label ?? image.import_label ?? null),
  revision: boot.annotation?.revision ?? null, // the server revision our map is based on
  dirty: false, // changes not yet saved to the server
  comment: boot.annotation?.comment ?? null,
  saving: null,
  draftWrite: null,
  draftPending: false,
};

// --- server resources (one place for the API's shapes) -----------------------------------------

/** This user's current annotation of the image on the server, or null. */
async function fetchMyAnnotation() {
  try {
    return await api(`images/${image.id}/annotation`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

function saliencyUrl(annotation) {
  return annotation.saliency_url || `/api/v1/annotations/${annotation.id}/saliency.png?revision=${annotation.revision}`;
}

async function fetchModelHeatmap() {
  const pred = await api(`images/${image.id}/prediction`);
  const src = pred.heatmap_png ? base64ToBlob(pred.heatmap_png) : pred.heatmap_url;
  if (!src) throw new Error("the stored prediction has no heatmap");
  return { pred, mask: await decodeGray(src, image.width, image.height) };
}

// --- save state -----------------------------------------------------------------------------

function setSaveState(kind, text) {
  saveStateEl.dataset.state = kind;
  saveStateEl.textContent = text;
}

function markDirty() {
  state.dirty = true;
  setSaveState("dirty", "Unsaved changes · draft kept in this browser");
  queueDraft();
}

function queueDraft() {
  // One write at a time; a change during a write schedules exactly one more.
  if (state.draftWrite) {
    state.draftPending = true;
    return;
  }
  state.draftWrite = (async () => {
    try {
      do {
        state.draftPending = false;
        const png = await encodeGrayPNG(painter.mask, image.width, image.height);
        await saveDraft(key, { png, label: state.label, baseRevision: state.revision });
      } while (state.draftPending);
      if (state.dirty) setSaveState("dirty", "Unsaved changes · draft kept in this browser");
      stage.dataset.draft = "stored";
    } catch (err) {
      console.error(err);
      setSaveState("error", "Could not keep a draft in this browser");
    } finally {
      state.draftWrite = null;
    }
  })();
}

function showBanner(html, actions = []) {
  banner.replaceChildren();
  const text = document.createElement("span");
  text.textContent = html;
  banner.append(text);
  for (const [label, fn] of actions) {
    const b = document.createElement("button");
    b.className = "btn small";
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", () => {
      banner.hidden = true;
      fn();
    });
    banner.append(b);
  }
  const close = document.createElement("button");
  close.className = "btn small icon";
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => (banner.hidden = true));
  banner.append(close);
  banner.hidden = false;
}

// --- labels ------------------------------------------------------------------------------------

const labelButtons = [...document.querySelectorAll("#labels [data-label]")];
function setLabel(label, fromUser = true) {
  state.label = label;
  for (const b of labelButtons) b.setAttribute("aria-pressed", String(b.dataset.label === label));
  if (fromUser) markDirty();
}
for (const b of labelButtons) {
  b.addEventListener("click", (e) => {
    setLabel(b.dataset.label);
    if (e.detail > 0) stage.focus({ preventScroll: true }); // mouse: keep keys for the canvas
  });
}

// --- saving -------------------------------------------------------------------------------------

// --- reader workflow: no map, statuses (issue 12) -------------------------------------------------

/** The painted map as PNG bytes, or null when nothing was painted: a label-only save sends no map. */
async function paintedPng() {
  if (!painter.hasPaint()) return null;
  return encodeGrayPNG(painter.mask, image.width, image.height);
}

function savedText(saved) {
  const parts = [`Saved · revision ${saved.revision ?? state.revision}`];
  if (saved.status && saved.status !== "done") parts.push(saved.status);
  else if (saved.has_saliency === false) parts.push("label only, no map");
  return parts.join(" · ");
}

async function putAnnotation(png, label, ifMatch, extra = {}) {
  const form = new FormData();
  if (label !== null && label !== undefined) form.append("label", label);
  if (png) form.append("saliency", new File([png], "saliency.png", { type: "image/png" }));
  for (const [name, value] of Object.entries(extra)) if (value !== null && value !== undefined) form.append(name, value);
  const headers = ifMatch !== null && ifMatch !== undefined ? { "If-Match": String(ifMatch) } : {};
  return api(`images/${image.id}/annotation`, { method: "PUT", body: form, headers });
}

async function save() {
  if (state.saving) return state.saving;
  if (project.labels.length && !state.label) {
    toast(`Pick a label first (keys 1–${Math.min(9, project.labels.length)}).`, "error");
    labelButtons[0]?.focus();
    return false;
  }
  state.saving = (async () => {
    setSaveState("saving", "Saving…");
    const png = await paintedPng();
    try {
      const saved = await putAnnotation(png, state.label, state.revision);
      await afterSaved(saved);
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) return resolveConflict(png, err);
      setSaveState("error", `Not saved: ${errorText(err)}`);
      toastError(err, "Not saved: ");
      return false;
    }
  })();
  try {
    return await state.saving;
  } finally {
    state.saving = null;
  }
}

async function afterSaved(saved) {
  state.revision = saved.revision ?? state.revision;
  state.dirty = false;
  if (state.draftWrite) await state.draftWrite;
  await deleteDraft(key);
  delete stage.dataset.draft;
  setSaveState("saved", savedText(saved));
  stage.dataset.saved = saved.has_saliency === false ? "no-map" : "map";
}

async function resolveConflict(myPng, err) {
  setSaveState("error", "Someone saved this image meanwhile: choose a version");
  let theirs = err.body?.current || err.body?.annotation || null;
  try {
    theirs = (await fetchMyAnnotation()) || theirs;
  } catch (e) {
    console.error(e);
  }
  const dialog = document.getElementById("conflict");
  const field = (name) => dialog.querySelector(`[data-field="${name}"]`);
  field("base").textContent = state.revision ?? "none";
  field("server").textContent = theirs?.revision ?? "?";
  field("mine-label").textContent = state.label ?? "none";
  field("theirs-label").textContent = theirs?.label ?? "none";
  field("theirs-time").textContent = fmtTime(theirs?.updated_at);
  const slots = { mine: dialog.querySelector('[data-slot="mine"]'), theirs: dialog.querySelector('[data-slot="theirs"]') };
  for (const [name, slot] of Object.entries(slots)) {
    const img = document.createElement("img");
    img.src = image.display_url;
    img.alt = "";
    slot.replaceChildren(img);
    const source = name === "mine" ? myPng : theirs && saliencyUrl(theirs);
    if (source) colorizeMap(source).then((c) => slot.append(c), console.error);
  }
  dialog.showModal();
  const choice = await new Promise((resolve) => {
    const onClick = (e) => {
      const c = e.target.closest("[data-choice]")?.dataset.choice;
      if (!c) return;
      dialog.removeEventListener("click", onClick);
      dialog.close();
      resolve(c);
    };
    dialog.addEventListener("click", onClick);
    dialog.addEventListener("cancel", () => resolve("cancel"), { once: true });
  });
  if (choice === "mine") {
    try {
      const saved = await putAnnotation(myPng, state.label, theirs?.revision ?? null);
      await afterSaved(saved);
      return true;
    } catch (e) {
      toastError(e, "Not saved: ");
      setSaveState("error", `Not saved: ${errorText(e)}`);
      return false;
    }
  }
  if (choice === "theirs" && theirs) {
    const mask = new Uint8Array(image.width * image.height);
    if (theirs.has_saliency !== false) mask.set(await decodeGray(saliencyUrl(theirs), image.width, image.height));
    painter.replaceMask(mask, "theirs");
    setLabel(theirs.label ?? null, false);
    state.revision = theirs.revision;
    state.dirty = false;
    await deleteDraft(key);
    setSaveState("saved", `Using the server's revision ${theirs.revision}`);
    return false;
  }
  setSaveState("dirty", "Unsaved changes · draft kept in this browser");
  return false;
}

async function saveAndNext() {
  if (painter.lassoOpen) {
    painter.closeLasso();
    return;
  }
  const ok = await save();
  if (ok) location.assign(`/projects/${project.id}/annotate?after=${image.id}`);
}

// --- reading status: skip, unsure, flag (issue 12) ---------------------------------------------------

const STATUS_HINTS = {
  unsure: "Why are you unsure? Your label and map are saved and a manager sees the comment.",
  flagged: "What should a manager look at? (wrong image, artefact, label missing from the project…)",
};

/** Skip: nothing is saved as a reading; the image comes back at the end of your queue, with any
 * painting kept as a draft in this browser. */
async function skipImage() {
  if (state.saving) return;
  try {
    const saved = await putAnnotation(null, null, state.revision, { status: "skipped" });
    if (state.dirty) {
      const png = await encodeGrayPNG(painter.mask, image.width, image.height);
      await saveDraft(key, { png, label: state.label, baseRevision: saved.revision });
    }
    state.dirty = false;
    location.assign(`/projects/${project.id}/annotate?after=${image.id}`);
  } catch (err) {
    toastError(err, "Not skipped: ");
  }
}

/** Open the comment box (keyboard focus in the text) and resolve with the comment, or null. */
function askComment(status) {
  const dialog = $("comment-dialog");
  const text = $("comment-text");
  $("comment-title").textContent = status === "unsure" ? "Unsure" : "Flag for review";
  $("comment-hint").textContent = STATUS_HINTS[status];
  text.value = state.comment ?? "";
  return new Promise((resolve) => {
    const done = (value) => {
      dialog.removeEventListener("close", onClose);
      text.removeEventListener("keydown", onKey);
      $("comment-cancel").removeEventListener("click", onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onClose = () => done(dialog.returnValue === "ok" && text.value.trim() ? text.value.trim() : null);
    const onCancel = () => done(null);
    const onKey = (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        if (text.value.trim()) done(text.value.trim());
      }
    };
    dialog.addEventListener("close", onClose);
    text.addEventListener("keydown", onKey);
    $("comment-cancel").addEventListener("click", onCancel);
    dialog.showModal();
    text.focus();
  });
}

async function saveWithStatus(status) {
  if (state.saving) return;
  const comment = await askComment(status);
  if (comment === null) {
    stage.focus({ preventScroll: true });
    return;
  }
  state.comment = comment;
  setSaveState("saving", "Saving…");
  const png = await paintedPng();
  try {
    const saved = await putAnnotation(png, state.label, state.revision, { status, comment });
    await afterSaved(saved);
    location.assign(`/projects/${project.id}/annotate?after=${image.id}`);
  } catch (err) {
    setSaveState("error", `Not saved: ${errorText(err)}`);
    toastError(err, "Not saved: ");
  }
}

function bindStatusControls() {
  $("skip").addEventListener("click", () => skipImage());
  $("unsure").addEventListener("click", () => saveWithStatus("unsure"));
  $("flag").addEventListener("click", () => saveWithStatus("flagged"));
}

// --- toolbar -------------------------------------------------------------------------------------

let painter;
let windowing = null; // the display window controls (windowing.js)
const $ = (id) => document.getElementById(id);
const sizeMax = Math.max(image.width, image.height);
// logarithmic size slider: fine control for small brushes, reach for large ones
const sizeToSlider = (px) => Math.round((1000 * Math.log(px)) / Math.log(sizeMax));
const sliderToSize = (v) => Math.max(1, Math.round(Math.exp((v / 1000) * Math.log(sizeMax))));

function syncControls() {
  for (const b of document.querySelectorAll("[data-tool]")) {
    if (b.tagName === "BUTTON") b.setAttribute("aria-pressed", String(b.dataset.tool === painter.tool));
  }
  $("size").value = sizeToSlider(painter.size);
  $("size-out").textContent = `${painter.size} px`;
  $("hardness").value = Math.round(painter.hardness * 100);
  $("hardness-out").textContent = `${Math.round(painter.hardness * 100)}%`;
  $("strength").value = Math.round(painter.strength * 100);
  $("strength-out").textContent = `${Math.round(painter.strength * 100)}%`;
  $("opacity").value = Math.round(painter.opacity * 100);
  $("opacity-out").textContent = `${Math.round(painter.opacity * 100)}%`;
  $("show-mask").checked = painter.maskVisible;
  $("undo").disabled = !painter.canUndo;
  $("redo").disabled = !painter.canRedo;
}

function bindToolbar() {
  for (const b of document.querySelectorAll("button[data-tool]")) {
    b.addEventListener("click", (e) => {
      painter.setTool(b.dataset.tool);
      if (e.detail > 0) stage.focus({ preventScroll: true });
    });
  }
  $("size").addEventListener("input", (e) => painter.setSize(sliderToSize(+e.target.value)));
  $("hardness").addEventListener("input", (e) => painter.setHardness(+e.target.value / 100));
  $("strength").addEventListener("input", (e) => painter.setStrength(+e.target.value / 100));
  $("opacity").addEventListener("input", (e) => painter.setOpacity(+e.target.value / 100));
  $("show-mask").addEventListener("change", (e) => painter.setMaskVisible(e.target.checked));
  $("undo").addEventListener("click", () => painter.undo());
  $("redo").addEventListener("click", () => painter.redo());
  $("clear").addEventListener("click", () => painter.clear() && toast("Map cleared (Ctrl+Z brings it back)."));
  $("fit").addEventListener("click", () => painter.fit());
  $("zoom-in").addEventListener("click", () => painter.zoomAt(1.25, painter.cssW / 2, painter.cssH / 2));
  $("zoom-out").addEventListener("click", () => painter.zoomAt(0.8, painter.cssW / 2, painter.cssH / 2));
  $("from-model").addEventListener("click", startFromModel);
  $("save").addEventListener("click", () => save());
  $("save-next").addEventListener("click", () => saveAndNext());
}

async function startFromModel() {
  const btn = $("from-model");
  btn.disabled = true;
  try {
    const { pred, mask } = await fetchModelHeatmap();
    if (!mask.some((v) => v > 0)) {
      toast(`Model v${pred.model_version}'s heatmap is empty for this image: nothing to start from.`);
      return;
    }
    painter.replaceMask(mask, "model");
    toast(`Started from model v${pred.model_version ?? boot.model?.version ?? "?"} (predicted ${pred.label}). Ctrl+Z undoes.`, "ok");
  } catch (err) {
    toastError(err, "Could not load the model's heatmap: ");
  } finally {
    btn.disabled = false;
  }
}

// --- keyboard ------------------------------------------------------------------------------------

const zoomBy = (factor) => painter.zoomAt(factor, painter.cssW / 2, painter.cssH / 2);
const TOOL_KEYS = { b: "brush", e: "eraser", l: "lasso" };
const both = (...chars) => chars.flatMap((c) => [c.toLowerCase(), c.toUpperCase()]);

/**
 * Every keyboard shortcut of the page, in the order the help lists them (the help list is
 * rendered from this table). A row fires when `e.key` is one of its `keys`: `ctrl` rows need Ctrl
 * (or Cmd), the others fire only without Ctrl, Cmd and Alt. `run(e)` returns false when the key
 * does nothing here, leaving the event to the browser; otherwise the event's default is
 * prevented. `help` is [the keys, with {X} shown as a <kbd>, description]; rows without keys
 * only document a pointer gesture, rows without help are not listed.
 */
const SHORTCUTS = [
  {
    keys: ["1", "2", "3", "4", "5", "6", "7", "8", "9"],
    help: ["{1}–{9}", "pick label"],
    run: (e) => project.labels[+e.key - 1] !== undefined && setLabel(project.labels[+e.key - 1]),
  },
  { keys: ["Enter"], help: ["{Enter}", "save and next"], run: (e) => !onControl(e) && saveAndNext() },
  { keys: both("s"), help: ["{S}", "skip (comes back last)"], run: (e) => !e.repeat && skipImage() },
  {
    keys: both("u", "r"),
    help: ["{U} {R}", "unsure, flag for review (comment)"],
    run: (e) => !e.repeat && saveWithStatus(e.key.toLowerCase() === "u" ? "unsure" : "flagged"),
  },
  {
    keys: both("b", "e", "l"),
    help: ["{B} {E} {L}", "brush, eraser, lasso"],
    run: (e) => painter.setTool(TOOL_KEYS[e.key.toLowerCase()]),
  },
  {
    keys: ["[", "]"],
    help: ["{[} {]}", "brush size"],
    run: (e) => painter.setSize(e.key === "[" ? painter.size / 1.15 : Math.max(painter.size + 1, painter.size * 1.15)),
  },
  {
    keys: ["{", "}"],
    help: ["{⇧}+{[} {]}", "hardness"],
    run: (e) => painter.setHardness(painter.hardness + (e.key === "{" ? -0.1 : 0.1)),
  },
  { keys: both("h"), help: ["{H}", "show / hide mask"], run: () => painter.setMaskVisible(!painter.maskVisible) },
  {
    keys: both("z"),
    ctrl: true,
    help: ["{Ctrl}+{Z}", "undo ({⇧} redo)"],
    run: (e) => {
      if (e.shiftKey) painter.redo();
      else painter.undo();
    },
  },
  {
    keys: both("y"),
    ctrl: true,
    run: () => {
      painter.redo();
    },
  },
  { keys: both("s"), ctrl: true, run: () => save() },
  { keys: [], help: ["wheel", "zoom at cursor"] },
  {
    keys: [" "],
    help: ["{Space}+drag", "pan"],
    run: (e) => !onControl(e) && (e.repeat || painter.setSpace(true)),
  },
  { keys: [], help: ["right drag", "erase with the brush"] },
  { keys: [], help: ["{Alt}+lasso", "lasso erases"] },
  // The display window leaves its drag mode first; otherwise Escape drops an open lasso.
  { keys: ["Escape"], help: ["{Esc}", "cancel lasso"], run: (e) => windowing?.handleKey(e) || painter.cancelLasso() },
  { keys: both("w"), help: ["{W}", "window/level drag mode"], run: (e) => windowing?.handleKey(e) },
  { keys: [], help: ["{Ctrl}+right drag", "window/level"] },
  { keys: both("v"), help: ["{V}", "window presets: header, auto, full"], run: (e) => windowing?.handleKey(e) },
  { keys: both("i"), help: ["{I}", "invert the display"], run: (e) => windowing?.handleKey(e) },
  { keys: both("f", "0"), run: () => painter.fit() },
  { keys: ["+", "="], run: () => zoomBy(1.25) },
  { keys: ["-"], run: () => zoomBy(0.8) },
  {
    keys: ["ArrowLeft", "ArrowRight"],
    // Shift+arrow goes to the previous / next image; the browser keeps the event.
    run: (e) => {
      const link = e.shiftKey && $(e.key === "ArrowLeft" ? "prev" : "next");
      if (link) location.assign(link.href);
      return false;
    },
  },
];

const shortcutFor = new Map();
for (const row of SHORTCUTS) for (const k of row.keys) shortcutFor.set(`${row.ctrl ? "ctrl+" : ""}${k}`, row);

/** Enter and Space belong to a focused button, link or checkbox rather than to the page. */
function onControl(e) {
  const target = e.target;
  return target instanceof HTMLElement && target !== stage && target.matches("button, a, input[type=checkbox]");
}

function onKeyDown(e) {
  if (document.querySelector("dialog[open]") || isTyping(e)) return;
  const mod = e.ctrlKey || e.metaKey;
  if (!mod && e.altKey) return;
  const row = shortcutFor.get(`${mod ? "ctrl+" : ""}${e.key}`);
  if (!row || row.run(e) === false) return;
  e.preventDefault();
}

/** The help list (dl.shortcut-list) from the table: {X} becomes <kbd>X</kbd>. */
function renderShortcutHelp(list) {
  const rows = [];
  for (const { help } of SHORTCUTS) {
    if (!help) continue;
    const [keys, text] = help.map((source) => {
      const parts = [];
      for (const [i, piece] of source.split(/\{([^}]+)\}/).entries()) {
        if (i % 2 === 0) {
          if (piece) parts.push(piece);
        } else {
          const kbd = document.createElement("kbd");
          kbd.textContent = piece;
          parts.push(kbd);
        }
      }
      return parts;
    });
    const dt = document.createElement("dt");
    dt.append(...keys);
    const dd = document.createElement("dd");
    dd.append(...text);
    rows.push(dt, dd);
  }
  list.replaceChildren(...rows);
}

function onKeyUp(e) {
  if (e.key === " ") painter.setSpace(false);
}

// --- start --------------------------------------------------------------------------------------

async function loadImage() {
  const img = new Image();
  img.decoding = "async";
  img.src = image.display_url; // the default window's rendering: DICOM and 16-bit images included
  await img.decode();
  return img;
}

async function main() {
  setSaveState("clean", "Loading image…");
  let img;
  try {
    img = await loadImage();
  } catch (err) {
    setSaveState("error", "The image could not be loaded");
    toastError(err, "Image: ");
    return;
  }
  painter = new Painter(stage, img, image.width, image.height);
  windowing = initWindowing({ painter, image, stage });
  bindToolbar();
  bindStatusControls();
  painter.addEventListener("settings", syncControls);
  painter.addEventListener("change", () => {
    syncControls();
    markDirty();
  });
  painter.addEventListener("viewchange", (e) => {
    $("zoom-readout").textContent = `${Math.round(e.detail.scale * 100)}%`;
  });
  $("zoom-readout").textContent = `${Math.round(painter.view.scale * 100)}%`;
  stage.addEventListener("pointermove", (e) => {
    const [x, y] = painter.toImage(e.clientX, e.clientY);
    const xi = Math.floor(x);
    const yi = Math.floor(y);
    if (xi >= 0 && yi >= 0 && xi < image.width && yi < image.height) {
      const v = painter.mask[yi * image.width + xi];
      $("cursor-readout").textContent = `x ${xi}  y ${yi}  ·  saliency ${Math.round((v / 255) * 100)}%`;
    } else $("cursor-readout").textContent = "";
  });
  renderShortcutHelp(document.querySelector(".shortcut-list"));
  document.addEventListener("keydown", onKeyDown);
  document.addEventListener("keyup", onKeyUp);
  window.addEventListener("blur", () => painter.setSpace(false));
  syncControls();
  setLabel(state.label, false);

  // The saved map, then any draft on top of it.
  if (boot.annotation?.has_saliency) {
    try {
      const mine = await fetchMyAnnotation();
      if (mine) painter.loadMask(await decodeGray(saliencyUrl(mine), image.width, image.height));
    } catch (err) {
      toastError(err, "Your saved map could not be loaded: ");
    }
  }
  let draft;
  try {
    draft = await loadDraft(key);
  } catch (err) {
    console.error(err);
  }
  if (draft) {
    painter.loadMask(await decodeGray(draft.png, image.width, image.height));
    if (draft.label !== undefined) setLabel(draft.label, false);
    const serverMoved = draft.baseRevision !== state.revision;
    state.revision = draft.baseRevision;
    state.dirty = true;
    stage.dataset.draft = "restored";
    setSaveState("dirty", "Unsaved draft restored · not yet saved");
    showBanner(
      serverMoved
        ? `Restored your unsaved draft from ${fmtTime(new Date(draft.savedAt))}. The saved version changed since; saving will let you choose.`
        : `Restored your unsaved draft from ${fmtTime(new Date(draft.savedAt))}.`,
      [
        [
          "Discard draft",
          async () => {
            await deleteDraft(key);
            location.reload();
          },
        ],
      ],
    );
  } else if (boot.annotation) {
    setSaveState("saved", savedText(boot.annotation));
  } else {
    setSaveState("clean", "Not annotated yet");
  }
  stage.focus({ preventScroll: true });
  document.body.dataset.ready = "true";
}

window.addEventListener("beforeunload", (e) => {
  // A draft write in flight may not finish: ask only then (the draft otherwise already holds the work).
  if (state.dirty && (state.draftWrite || state.saving)) e.preventDefault();
});

main();
