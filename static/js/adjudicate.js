// Adjudication page: every reader's map side by side; start from the consensus, one reader's map
// or the current adjudication, correct it in the painter, pick the label and save a revision.

import { ApiError, api, errorText } from "./api.js";
import { mapPicture } from "./overlays.js";
import { Painter } from "./painter.js";
import { decodeGray, encodeGrayPNG } from "./png.js";
import { bootData, el, fmtNum, isTyping, toast, toastError } from "./ui.js";

const boot = bootData();
const { image, project } = boot;
const $ = (id) => document.getElementById(id);
const stateEl = $("adj-state");
const state = {
  label: boot.adjudication?.label ?? null,
  revision: boot.adjudication?.revision ?? null,
  saving: false,
};
let painter;

function setState(kind, text) {
  stateEl.dataset.state = kind;
  stateEl.textContent = text;
}

const labelButtons = [...document.querySelectorAll("#labels [data-label]")];
function setLabel(label) {
  state.label = label;
  for (const b of labelButtons) b.setAttribute("aria-pressed", String(b.dataset.label === label));
}

function setTool(tool) {
  painter.setTool(tool);
  for (const b of document.querySelectorAll("button[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
}

async function startFrom(name, url) {
  try {
    painter.replaceMask(url ? await decodeGray(url, image.width, image.height) : new Uint8Array(image.width * image.height), "start");
    $("adj-source").textContent = `Starting map: ${name} (Ctrl+Z undoes)`;
    $("stage").dataset.source = name;
  } catch (err) {
    toastError(err, "Could not load that map: ");
  }
}

function card(title, meta, mapUrl, startName) {
  const button = el("button", { class: "btn small", type: "button", text: "Start from this" });
  button.dataset.start = startName;
  button.addEventListener("click", () => startFrom(startName, mapUrl));
  return el(
    "article",
    { class: "map-card" },
    mapPicture(image.file_url, mapUrl, `${title}: saliency over the image`),
    el("div", { class: "meta" }, el("strong", { text: title }), el("span", { class: "small muted" }, meta), button),
  );
}

async function loadReadings() {
  const cards = [];
  const data = await api(`images/${image.id}/annotations`);
  cards.push(
    card(
      "Consensus (mean)",
      data.consensus.available ? `${data.consensus.maps} map${data.consensus.maps === 1 ? "" : "s"} · IoU ${fmtNum(data.agreement?.iou, 2)}` : "no maps",
      data.consensus.url,
      "consensus",
    ),
  );
  for (const a of data.annotations) {
    if (a.status === "skipped") continue;
    const meta = [a.label ?? "no label", a.has_saliency ? null : "label only, no map", a.status !== "done" ? `${a.status}: ${a.comment ?? ""}` : null]
      .filter(Boolean)
      .join(" · ");
    cards.push(card(a.author, meta, a.has_saliency ? a.saliency_url : null, `reader ${a.author}`));
  }
  if (state.revision !== null) {
    try {
      const adj = await api(`images/${image.id}/adjudication`);
      cards.push(card("Adjudication", `${adj.label} · rev ${adj.revision} · ${adj.author ?? ""}`, adj.saliency_url, "adjudication"));
      if (adj.saliency_url) painter.loadMask(await decodeGray(adj.saliency_url, image.width, image.height));
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
    }
  }
  $("maps").replaceChildren(...cards);
}

async function save() {
  if (state.saving) return;
  if (!state.label) {
    toast(`Pick the adjudicated label first (keys 1–${Math.min(9, project.labels.length)}).`, "error");
    return;
  }
  state.saving = true;
  setState("saving", "Saving…");
  try {
    const form = new FormData();
    form.append("label", state.label);
    if (painter.hasPaint()) {
      const png = await encodeGrayPNG(painter.mask, image.width, image.height);
      form.append("saliency", new File([png], "adjudication.png", { type: "image/png" }));
    }
    const headers = state.revision !== null ? { "If-Match": String(state.revision) } : {};
    const saved = await api(`images/${image.id}/adjudication`, { method: "PUT", body: form, headers });
    state.revision = saved.revision;
    setState("saved", `Adjudicated · revision ${saved.revision}${saved.has_saliency ? "" : " · label only"}`);
    toast("Adjudication saved: training uses it from the next run.", "ok");
  } catch (err) {
    setState("error", `Not saved: ${errorText(err)}`);
    toastError(err, "Not saved: ");
  } finally {
    state.saving = false;
  }
}

function onKeyDown(e) {
  if (document.querySelector("dialog[open]") || isTyping(e)) return;
  const mod = e.ctrlKey || e.metaKey;
  if (mod && (e.key === "s" || e.key === "S")) {
    e.preventDefault();
    save();
  } else if (mod && (e.key === "z" || e.key === "Z")) {
    e.preventDefault();
    if (e.shiftKey) painter.redo();
    else painter.undo();
  } else if (!mod && !e.altKey && /^[1-9]$/.test(e.key) && project.labels[+e.key - 1] !== undefined) {
    setLabel(project.labels[+e.key - 1]);
  } else if (!mod && (e.key === "b" || e.key === "B")) setTool("brush");
  else if (!mod && (e.key === "e" || e.key === "E")) setTool("eraser");
  else if (!mod && e.key === "[") painter.setSize(painter.size / 1.15);
  else if (!mod && e.key === "]") painter.setSize(Math.max(painter.size + 1, painter.size * 1.15));
}

async function main() {
  const img = new Image();
  img.src = image.file_url;
  await img.decode();
  painter = new Painter($("stage"), img, image.width, image.height);
  for (const b of labelButtons) b.addEventListener("click", () => setLabel(b.dataset.label));
  for (const b of document.querySelectorAll("button[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("adj-undo").addEventListener("click", () => painter.undo());
  $("adj-clear").addEventListener("click", () => painter.clear());
  $("adj-save").addEventListener("click", () => save());
  document.addEventListener("keydown", onKeyDown);
  setLabel(state.label);
  try {
    await loadReadings();
  } catch (err) {
    toastError(err, "Readings: ");
  }
  document.body.dataset.ready = "true";
}

main();
