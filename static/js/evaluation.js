// Models page, one model version in detail: ROC curve (SVG), PAD error rates, closed-set vs
// unseen-subtype numbers, the inverted-saliency sanity check, and downloads of export archives.

import { api } from "./api.js";
import { el, fmtNum, pct, toast, toastError } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#f5b83d", "#8cc4ff", "#5fd38d", "#ff7a7a"];

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** curves: [{name, fpr: [...], tpr: [...]}] on a square 0..1 plot with the chance diagonal. */
export function rocChart(svg, curves) {
  svg.replaceChildren();
  const S = 260;
  const pad = { l: 36, r: 8, t: 8, b: 30 };
  svg.setAttribute("viewBox", `0 0 ${S + pad.l + pad.r} ${S + pad.t + pad.b}`);
  const sx = (x) => pad.l + x * S;
  const sy = (y) => pad.t + (1 - y) * S;
  svg.append(svgEl("rect", { x: sx(0), y: sy(1), width: S, height: S, fill: "none", class: "axis" }));
  svg.append(svgEl("line", { x1: sx(0), y1: sy(0), x2: sx(1), y2: sy(1), class: "axis", "stroke-dasharray": "4 4" }));
  for (const v of [0, 0.5, 1]) {
    svg.append(svgEl("text", { x: pad.l - 4, y: sy(v) + 3, "text-anchor": "end" }, v.toFixed(1)));
    svg.append(svgEl("text", { x: sx(v), y: pad.t + S + 14, "text-anchor": "middle" }, v.toFixed(1)));
  }
  svg.append(svgEl("text", { x: sx(0.5), y: pad.t + S + 27, "text-anchor": "middle" }, "false positive rate"));
  svg.append(svgEl("text", { x: 10, y: sy(0.5), transform: `rotate(-90 10 ${sy(0.5)})`, "text-anchor": "middle" }, "true positive rate"));
  curves.forEach((c, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const points = c.fpr.map((x, j) => `${sx(x)},${sy(c.tpr[j])}`).join(" ");
    svg.append(svgEl("polyline", { points, fill: "none", stroke: colour, "stroke-width": 2, class: "roc-curve", "data-split": c.name }));
    const label = svgEl("text", { x: sx(0.45), y: sy(0.08 + 0.08 * i), fill: colour }, c.label);
    label.style.fill = colour;
    svg.append(label);
  });
}

function table(id, head, rows) {
  return el(
    "table",
    { class: "data small", id },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("th", { scope: "row", text: r[0] }), r.slice(1).map((v) => el("td", { text: v }))))),
  );
}

const ci = (roc) => (roc?.auroc_ci95 ? `${fmtNum(roc.auroc)} [${fmtNum(roc.auroc_ci95[0])}, ${fmtNum(roc.auroc_ci95[1])}]` : fmtNum(roc?.auroc));

function rocSection(m) {
  const roc = m.roc;
  if (!roc || (!roc.val && !roc.test)) return el("p", { class: "muted", text: "No ROC curve: it needs two classes (or a positive label) and both in a split." });
  const svg = svgEl("svg", { class: "chart roc", id: "roc-chart", role: "img", "aria-label": `ROC curve of ${roc.positive_label}` });
  const curves = ["val", "test"].filter((s) => roc[s]).map((s) => ({ name: s, label: `${s}: AUROC ${fmtNum(roc[s].auroc)}`, fpr: roc[s].fpr, tpr: roc[s].tpr }));
  rocChart(svg, curves);
  const rows = ["val", "test"].filter((s) => roc[s]).map((s) => [s, ci(roc[s]), `${roc[s].n_positive} / ${roc[s].n_negative}`]);
  return el("div", {}, el("h3", { text: `ROC (positive: ${roc.positive_label})` }), svg, table("roc-table", ["split", "AUROC [95% CI]", "positives / negatives"], rows));
}

function padSection(m) {
  const pad = m.pad;
  if (!pad) return null;
  const rows = [["EER (val)", pct(pad.val.eer.eer, 1), fmtNum(pad.val.eer.threshold)]];
  for (const op of pad.val.bpcer_at_apcer) rows.push([`BPCER @ APCER ${pct(op.apcer_target)} (val)`, pct(op.bpcer, 1), fmtNum(op.threshold)]);
  if (pad.test) {
    const t = pad.test.at_val_eer_threshold;
    rows.push(["test at val EER threshold: APCER / BPCER", `${pct(t.apcer, 1)} / ${pct(t.bpcer, 1)}`, fmtNum(t.threshold)]);
    for (const op of pad.test.at_val_apcer_thresholds) rows.push([`test at val APCER ${pct(op.apcer_target)} threshold: APCER / BPCER`, `${pct(op.apcer, 1)} / ${pct(op.bpcer, 1)}`, fmtNum(op.threshold)]);
    if (pad.test.eer) rows.push(["EER (test)", pct(pad.test.eer.eer, 1), fmtNum(pad.test.eer.threshold)]);
  }
  return el("div", {}, el("h3", { text: `Presentation attack detection (attack: ${pad.attack_label})` }), table("pad-table", ["", "value", "threshold"], rows));
}

function openSetSection(m) {
  const o = m.open_set;
  if (!o) return null;
  const c = o.closed_set || {};
  const u = o.unseen || {};
  const rows = [
    ["images", fmtNum(c.n), fmtNum(u.n)],
    ["accuracy", pct(c.accuracy, 1), pct(u.accuracy, 1)],
    ["APCER at val threshold", pct(c.apcer, 1), pct(u.apcer, 1)],
    ["AUROC", fmtNum(c.auroc), fmtNum(u.auroc)],
    ["EER", pct(c.eer, 1), pct(u.eer, 1)],
  ];
  return el(
    "div",
    {},
    el("h3", { text: `Open set: subtype “${o.subtype}” left out of training` }),
    table("open-set-table", ["", "closed set (test)", `unseen: ${o.subtype}`], rows),
    o.note ? el("p", { class: "small muted", text: o.note }) : null,
  );
}

async function sanitySection(model, canManage, refresh) {
  const box = el("div", { id: "sanity" }, el("h3", { text: "Sanity check: inverted saliency" }));
  let report = null;
  try {
    report = await api(`models/${model.id}/sanity-check`);
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  if (report) {
    const a = report.original;
    const b = report.inverted;
    box.append(
      table("sanity-table", ["", `v${model.version}`, "inverted maps"], [
        ["status", "–", report.status],
        ["test accuracy", pct(a.test_accuracy, 1), pct(b.test_accuracy, 1)],
        ["validation accuracy", pct(a.val_accuracy, 1), pct(b.val_accuracy, 1)],
        ["AUROC", fmtNum(a.auroc), fmtNum(b.auroc)],
        ["heatmap alignment (val)", fmtNum(a.alignment), fmtNum(b.alignment)],
      ]),
      el("p", { class: "sanity-reading", text: report.comparison?.reading || (report.error ? `failed: ${report.error}` : "Training with inverted maps…") }),
    );
    if (["queued", "running"].includes(report.status)) setTimeout(refresh, 3000);
  } else {
    box.append(el("p", { class: "small muted", text: "Train the same configuration with the saliency maps inverted: if the maps matter, it does worse. The result is never activated." }));
  }
  if (canManage && model.config?.method === "sage" && !(report && ["queued", "running"].includes(report.status))) {
    box.append(
      el("button", {
        class: "btn small",
        type: "button",
        id: "sanity-start",
        text: report ? "Run the sanity check again" : "Run the sanity check",
        onclick: async () => {
          try {
            await api(`models/${model.id}/sanity-check`, { method: "POST" });
            toast("Sanity check queued: training with inverted maps.");
            refresh();
          } catch (err) {
            toastError(err, "Could not start the sanity check: ");
          }
        },
      }),
    );
  }
  return box;
}

function saveBlob(blob, name) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function download(model, format, button) {
  const url = `models/${model.id}/download?format=${format}`;
  button.disabled = true;
  try {
    for (let attempt = 0; attempt < 300; attempt++) {
      const res = await api(url, { raw: true });
      if (res.status === 200) {
        saveBlob(await res.blob(), `model-v${model.version}-${format}.zip`);
        toast(`Downloaded model v${model.version} (${format}).`, "ok");
        return;
      }
      if (res.status !== 202) {
        const body = await res.json().catch(() => ({}));
        throw new Error(body.detail || res.statusText);
      }
      if (attempt === 0) toast(`Building the ${format} archive…`);
      await new Promise((r) => setTimeout(r, 1500));
    }
    throw new Error("the archive is still being built; try again later");
  } catch (err) {
    toastError(err, "Download failed: ");
  } finally {
    button.disabled = false;
  }
}

function downloadControls(model) {
  const select = el("select", { id: "export-format", "aria-label": "Export format" }, ["onnx", "torchscript", "state_dict"].map((f) => el("option", { value: f, text: f })));
  const button = el("button", { class: "btn small", type: "button", text: "Download", id: "export-download" });
  button.addEventListener("click", () => download(model, select.value, button));
  return el("div", { class: "row" }, select, button);
}

/** Fill `container` with the evaluation of `model` (a ModelOut). */
export async function showModel(container, model, { canManage }) {
  const m = model.metrics || {};
  const refresh = () => showModel(container, model, { canManage }).catch(console.error);
  const sections = [
    el("div", { class: "row" }, el("h2", { id: "model-detail-title", style: "margin:0", text: `Model v${model.version} · ${model.config?.method ?? ""} ${model.backbone}` }), el("span", { class: "spacer" }), canManage ? downloadControls(model) : null),
    el("div", { class: "grid cols-2", style: "margin-top:12px" }, rocSection(m), el("div", {}, padSection(m), openSetSection(m))),
    await sanitySection(model, canManage, refresh),
  ];
  container.replaceChildren(...sections.filter(Boolean));
  container.hidden = false;
}
