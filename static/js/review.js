// Review page: every annotator's map for one image, the consensus, agreement and the model's heatmap.

import { ApiError, api } from "./api.js";
import { mapPicture, overlayControls } from "./overlays.js";
import { bootData, el, fmtNum, fmtTime, pct, toastError } from "./ui.js";

const boot = bootData();
const { image } = boot;
const $ = (id) => document.getElementById(id);

function card(title, meta, mapUrl) {
  return el(
    "article",
    { class: "map-card" },
    mapPicture(image.display_url, mapUrl, `${title}: saliency over the image`),
    el("div", { class: "meta" }, el("strong", { text: title }), el("span", { class: "small muted" }, meta)),
  );
}

/** One reader's annotation in words: label, "label only, no map", status and comment. */
function annotationMeta(a) {
  const parts = [a.label ?? "no label"];
  if (!a.has_saliency) parts.push("label only, no map");
  if (a.status && a.status !== "done") parts.push(a.comment ? `${a.status}: ${a.comment}` : a.status);
  parts.push(`rev ${a.revision}`, fmtTime(a.updated_at));
  return parts.join(" · ");
}

async function main() {
  const maps = $("maps");
  const cards = [];
  try {
    const data = await api(`images/${image.id}/annotations`);
    $("n-maps").textContent = data.annotations.filter((a) => a.has_saliency).length;
    $("agree-iou").textContent = fmtNum(data.agreement?.iou, 2);
    $("agree-r").textContent = fmtNum(data.agreement?.pearson, 2);
    if (data.label) $("image-label").textContent = data.label;
    cards.push(
      card(
        "Consensus",
        data.consensus.available ? `${data.consensus.source}, ${data.consensus.maps} map${data.consensus.maps === 1 ? "" : "s"}` : "no maps yet",
        data.consensus.url,
      ),
    );
    for (const a of data.annotations) {
      cards.push(
        card(a.author, annotationMeta(a), a.has_saliency ? a.saliency_url : null),
      );
    }
  } catch (err) {
    toastError(err, "Annotations: ");
  }
  try {
    const pred = await api(`images/${image.id}/prediction`);
    $("model-align").textContent = fmtNum(pred.alignment, 2);
    cards.splice(1, 0, card(`Model v${pred.model_version}`, `${pred.label} · ${pct(pred.confidence)}`, pred.heatmap_url));
  } catch (err) {
    if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 409)) toastError(err, "Prediction: ");
  }
  maps.replaceChildren(...cards);
  document.body.dataset.ready = "true";
}

overlayControls($("overlay-toggle"), $("overlay-opacity"));
main();
