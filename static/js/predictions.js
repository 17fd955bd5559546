// Predictions gallery: predicted label and confidence, heatmap overlay, human saliency beside it.

import { api } from "./api.js";
import { overlayControls } from "./overlays.js";
import { bootData, colorizeMap, el, fmtNum, pct, toastError } from "./ui.js";

const boot = bootData();
const pid = boot.project.id;
const $ = (id) => document.getElementById(id);
const PAGE = 48;
let offset = 0;

function figure(caption, imageUrl, mapUrl) {
  const fig = el("figure", {}, el("img", { src: imageUrl, alt: "", loading: "lazy" }), el("figcaption", { text: caption }));
  if (mapUrl) {
    colorizeMap(mapUrl)
      .then((c) => fig.insertBefore(c, fig.querySelector("figcaption")))
      .catch(() => fig.querySelector("figcaption").append(" (none)"));
  }
  return fig;
}

function predCard(p) {
  const human = `/api/v1/images/${p.image_id}/saliency.png`;
  const right = p.image_label ? p.image_label === p.label : null;
  return el(
    "article",
    { class: "pred-card", dataset: { imageId: p.image_id } },
    el("div", { class: "pics" }, figure("model", p.image_url, p.heatmap_url), figure("human", p.image_url, human)),
    el(
      "div",
      { class: "meta" },
      el(
        "div",
        { class: "row" },
        el("strong", { text: p.label }),
        right === null ? null : el("span", { class: `badge ${right ? "ok" : "danger"}`, text: right ? "matches label" : `label: ${p.image_label}` }),
        el("span", { class: "spacer" }),
        el("span", { class: "small muted", text: pct(p.confidence) }),
      ),
      el("div", { class: "conf-bar", role: "img", "aria-label": `confidence ${pct(p.confidence)}` }, el("span", { style: `width:${100 * p.confidence}%` })),
      el(
        "div",
        { class: "row small muted", style: "margin-top:6px" },
        el("span", { text: `uncertainty ${fmtNum(p.uncertainty, 2)}` }),
        p.alignment_hidden
          ? el("span", { text: "alignment hidden until you read it", title: "blind reading: the alignment compares the model with other readers' maps" })
          : el("span", { text: `alignment ${fmtNum(p.alignment, 2)}` }),
        el("span", { class: "spacer" }),
        el("a", { href: `/projects/${pid}/review/${p.image_id}`, text: "Review" }),
      ),
    ),
  );
}

async function load(reset) {
  if (reset) {
    offset = 0;
    $("gallery").replaceChildren();
  }
  const params = new URLSearchParams({ sort: $("sort").value, limit: String(PAGE), offset: String(offset) });
  if ($("filter-label").value) params.set("label", $("filter-label").value);
  try {
    const preds = await api(`projects/${pid}/predictions?${params}`);
    $("gallery").append(...preds.map(predCard));
    offset += preds.length;
    $("more").hidden = preds.length < PAGE;
    $("gallery-empty").hidden = offset > 0;
  } catch (err) {
    toastError(err, "Predictions: ");
  }
  document.body.dataset.ready = "true";
}

$("sort").addEventListener("change", () => load(true));
$("filter-label").addEventListener("change", () => load(true));
$("more").addEventListener("click", () => load(false));
overlayControls($("overlay-toggle"), $("overlay-opacity"));
load(true);
