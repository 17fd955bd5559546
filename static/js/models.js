// Models page: runs with live progress (server-sent events), curves, confusion matrix, activation.

import { api } from "./api.js";
import { confusionTable, lineChart } from "./charts.js";
import { showModel } from "./evaluation.js";
import { describeProgress, followRun, runFraction } from "./training.js";
import { bootData, el, fmtNum, fmtTime, pct, toast, toastError } from "./ui.js";

const boot = bootData();
const pid = boot.project.id;
const canManage = boot.role === "manager";
const $ = (id) => document.getElementById(id);
const following = new Set();
let selectedRun = null;

function runRow(run) {
  const bar = el("progress", { max: "1", value: String(runFraction(run)), "aria-label": `Run ${run.id} progress` });
  bar.dataset.status = run.status;
  const text = el("div", { class: "small muted", text: describeProgress(run) });
  const actions = el("td");
  if (canManage && ["queued", "running"].includes(run.status)) {
    actions.append(
      el("button", {
        class: "btn small danger",
        type: "button",
        text: "Cancel",
        onclick: async () => {
          try {
            await api(`training-runs/${run.id}/cancel`, { method: "POST" });
            toast(`Cancelling run #${run.id}…`);
          } catch (err) {
            toastError(err, "Cancel failed: ");
          }
        },
      }),
    );
  }
  actions.append(el("button", { class: "btn small", type: "button", text: "Details", onclick: () => showRun(run) }));
  const status = el("span", { class: `badge ${badgeFor(run.status)}`, text: run.status });
  const tr = el(
    "tr",
    { dataset: { runId: run.id, status: run.status } },
    el("td", {}, `#${run.id}`, el("div", { class: "small muted", text: fmtTime(run.created_at) })),
    el("td", {}, status),
    el("td", {}, bar, text),
    actions,
  );
  if (run.error) tr.title = run.error;
  return tr;
}

function badgeFor(status) {
  return { succeeded: "ok", failed: "danger", cancelled: "danger", running: "info", queued: "warn" }[status] || "";
}

async function loadRuns() {
  const runs = await api(`projects/${pid}/training-runs`);
  const body = $("runs").tBodies[0];
  body.replaceChildren(...runs.map(runRow));
  $("runs-empty").hidden = runs.length > 0;
  for (const run of runs) {
    if (["queued", "running"].includes(run.status) && !following.has(run.id)) follow(run);
  }
  if (!selectedRun && runs.length) showRun(runs.find((r) => r.status === "succeeded") || runs[0]);
  return runs;
}

function follow(run) {
  following.add(run.id);
  const epochs = [];
  followRun(
    run,
    (current) => {
      const old = document.querySelector(`tr[data-run-id="${run.id}"]`);
      if (old) old.replaceWith(runRow(current));
      if (selectedRun?.id === run.id) showRun(current, epochs);
    },
    (kind, data) => {
      if (kind === "epoch") epochs.push(data);
    },
  ).then((final) => {
    following.delete(run.id);
    if (final.status === "succeeded") toast(`Run #${run.id} finished.`, "ok");
    if (final.status === "failed") toast(`Run #${run.id} failed: ${final.error || "unknown error"}`, "error", 10000);
    loadRuns().catch(console.error);
    loadModels().catch(console.error);
  });
}

function showRun(run, liveEpochs = null) {
  selectedRun = run;
  $("run-detail").hidden = false;
  $("detail-title").textContent = `Run #${run.id} · ${run.status}`;
  const opts = run.options || {};
  $("detail-meta").textContent = [opts.method, opts.backbone, opts.epochs && `${opts.epochs} epoch${opts.epochs === 1 ? "" : "s"}`, opts.image_size && `${opts.image_size}px`]
    .filter(Boolean)
    .join(" · ");
  const m = run.metrics || {};
  const history = m.history?.length
    ? m.history.map((h) => ({ epoch: h.epoch, train: h.train?.loss ?? h.train?.total, val: h.val }))
    : (liveEpochs || []).map((e) => ({ epoch: e.epoch, train: e.losses?.loss ?? e.losses?.total, val: e.val }));
  lineChart($("loss-chart"), [
    { name: "train", points: history.map((h) => [h.epoch, h.train]) },
    { name: "val", points: history.map((h) => [h.epoch, h.val?.loss]) },
  ]);
  lineChart($("acc-chart"), [{ name: "val acc", points: history.map((h) => [h.epoch, h.val?.accuracy]) }], {
    yMin: 0,
    yMax: 1,
    format: (v) => `${Math.round(v * 100)}%`,
  });
  const cm = m.val?.confusion_matrix;
  $("confusion").replaceChildren(cm ? confusionTable(cm, m.labels || boot.project.labels) : el("p", { class: "muted", text: "Available when the run has finished." }));
  const rows = [
    ["validation accuracy", pct(m.val_accuracy, 1)],
    ["test accuracy", pct(m.test_accuracy, 1)],
    ["balanced accuracy (val)", pct(m.val?.balanced_accuracy, 1)],
    ["macro F1 (val)", fmtNum(m.val?.macro_f1)],
    ["heatmap alignment (val, soft IoU)", fmtNum(m.val?.alignment?.soft_iou ?? m.val?.alignment?.iou)],
    ["images (train / with saliency)", m.num_train !== undefined ? `${m.num_train} / ${m.num_train_with_saliency}` : "–"],
    ["training time", m.train_seconds !== undefined ? `${m.train_seconds.toFixed(1)} s` : "–"],
  ];
  if (run.error) rows.unshift(["error", run.error]);
  $("metrics").tBodies[0].replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: v }))));
}

async function loadModels() {
  const models = await api(`projects/${pid}/models`);
  const body = $("models").tBodies[0];
  body.replaceChildren(
    ...models.map((m) => {
      const action = el("td");
      const sanityTwin = m.config?.method === "sage-inverted";
      if (m.active) action.append(el("span", { class: "badge ok", text: "active" }));
      else if (sanityTwin) action.append(el("span", { class: "badge warn", text: "sanity check", title: "trained on inverted maps; never activated" }));
      else if (canManage) {
        action.append(
          el("button", {
            class: "btn small",
            type: "button",
            text: "Activate",
            "data-admin-only": true,
            onclick: async () => {
              try {
                await api(`models/${m.id}/activate`, { method: "POST" });
                toast(`Model v${m.version} is now active; predictions are being refreshed.`, "ok");
                loadModels();
              } catch (err) {
                toastError(err, "Activation failed: ");
              }
            },
          }),
        );
      }
      const row = el(
        "tr",
        { dataset: { modelId: m.id } },
        el("td", {}, el("strong", { text: `v${m.version}` }), el("div", { class: "small muted", text: `${m.config?.method ?? ""} ${m.backbone}` })),
        el("td", { text: pct(m.metrics?.val_accuracy, 1) }),
        el("td", { text: pct(m.metrics?.test_accuracy, 1) }),
        el("td", { class: "small", text: fmtTime(m.created_at) }),
        action,
      );
      action.append(el("button", { class: "btn small", type: "button", text: "Evaluation", dataset: { evaluate: m.id }, onclick: () => showModel($("model-detail"), m, { canManage }).catch(toastError) }));
      return row;
    }),
  );
  $("models-empty").hidden = models.length > 0;
  const shown = models.find((m) => m.active) || models[0];
  if (shown && $("model-detail").hidden) await showModel($("model-detail"), shown, { canManage });
}

$("repredict")?.addEventListener("click", async () => {
  try {
    const answer = await api(`projects/${pid}/predictions/refresh`, { method: "POST" });
    toast(`Re-predicting every image with model v${answer.model_version}.`, "ok");
  } catch (err) {
    toastError(err, "Could not re-predict: ");
  }
});

$("train-now")?.addEventListener("click", async () => {
  try {
    const run = await api(`projects/${pid}/training-runs`, { method: "POST", body: {} });
    toast(run.joined ? `Following run #${run.id}, already under way.` : `Run #${run.id} queued.`);
    selectedRun = null;
    await loadRuns();
  } catch (err) {
    toastError(err, "Could not start training: ");
  }
});

Promise.all([loadRuns(), loadModels()])
  .catch((err) => toastError(err))
  .finally(() => (document.body.dataset.ready = "true"));
