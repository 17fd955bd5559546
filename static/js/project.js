// Project overview: train now with a live progress bar, retraining policy, uploads and zip import.

import { api, upload } from "./api.js";
import { describeProgress, followRun, runFraction } from "./training.js";
import { bootData, toast, toastError } from "./ui.js";

const boot = bootData();
const pid = boot.project.id;
const $ = (id) => document.getElementById(id);

// --- training ------------------------------------------------------------------------------------

function showRun(run) {
  const bar = $("train-progress");
  const status = $("train-status");
  if (!bar) return;
  bar.hidden = false;
  bar.value = runFraction(run);
  bar.dataset.status = run.status;
  bar.setAttribute("aria-valuetext", `${Math.round(bar.value * 100)}% ${run.status}`);
  status.textContent = `Run #${run.id}: ${describeProgress(run)}`;
  if (run.status === "failed" && run.error) status.textContent += ` (${run.error})`;
}

async function watch(run) {
  showRun(run);
  $("train-now").disabled = true;
  const final = await followRun(run, showRun);
  $("train-now").disabled = false;
  if (final.status === "succeeded") {
    toast(`Training finished: model ${final.model_id ? "ready" : "stored"}.`, "ok");
  } else if (final.status === "failed") toast(`Training failed: ${final.error || "see the models page"}`, "error", 10000);
}

$("train-now")?.addEventListener("click", async () => {
  try {
    const choice = $("train-weights")?.selectedOptions[0];
    const training = choice?.value
      ? { weights: choice.value, backbone: choice.dataset.backbone, image_size: Number(choice.dataset.imageSize) }
      : undefined;
    const run = await api(`projects/${pid}/training-runs`, { method: "POST", body: training ? { training } : {} });
    if (run.joined) toast(`A run was already under way: following run #${run.id}.`);
    watch(run);
  } catch (err) {
    toastError(err, "Could not start training: ");
  }
});

if (boot.run && ["queued", "running"].includes(boot.run.status) && $("train-progress")) watch(boot.run);

// --- retraining policy -----------------------------------------------------------------------------

$("policy-form")?.addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  try {
    await api(`projects/${pid}`, {
      method: "PATCH",
      body: {
        retrain_enabled: f.retrain_enabled.checked,
        retrain_min_new: Number(f.retrain_min_new.value),
        activation_policy: f.activation_policy.value,
        next_policy: f.next_policy.value,
      },
    });
    toast("Policy saved.", "ok");
  } catch (err) {
    toastError(err, "Policy not saved: ");
  }
});

// --- uploads and import --------------------------------------------------------------------------

const progress = $("upload-progress");
const statusLine = $("upload-status");

async function sendImages(files) {
  const images = [...files].filter((f) => !f.name.toLowerCase().endsWith(".zip"));
  const zips = [...files].filter((f) => f.name.toLowerCase().endsWith(".zip"));
  for (const zip of zips) await sendZip(zip);
  if (!images.length) return;
  const form = new FormData();
  for (const f of images) form.append("files", f, f.name);
  if ($("upload-label").value) form.append("label", $("upload-label").value);
  form.append("split", $("upload-split").value);
  progress.hidden = false;
  progress.value = 0;
  statusLine.textContent = `Uploading ${images.length} image${images.length > 1 ? "s" : ""}…`;
  try {
    const res = await upload(`projects/${pid}/images`, form, (p) => (progress.value = p));
    progress.value = 1;
    const n = res.images?.length ?? images.length;
    statusLine.textContent = `Added ${n} image${n > 1 ? "s" : ""}. Reloading…`;
    setTimeout(() => location.reload(), 600);
  } catch (err) {
    statusLine.textContent = "";
    toastError(err, "Upload failed: ");
  }
}

async function sendZip(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  progress.hidden = false;
  progress.value = 0;
  statusLine.textContent = `Importing ${file.name}…`;
  try {
    const res = await upload(`projects/${pid}/import`, form, (p) => {
      progress.value = p;
      if (p >= 1) statusLine.textContent = `Checking and importing ${file.name} on the server…`;
    });
    const n = res.imported ?? res.images ?? res.created;
    statusLine.textContent = `Imported ${typeof n === "number" ? n : Array.isArray(n) ? n.length : ""} images. Reloading…`;
    setTimeout(() => location.reload(), 800);
  } catch (err) {
    statusLine.textContent = "";
    toastError(err, "Import failed: ");
  }
}

$("upload-files")?.addEventListener("change", (e) => sendImages(e.target.files));
$("import-zip")?.addEventListener("change", (e) => e.target.files[0] && sendZip(e.target.files[0]));
const drop = $("dropzone");
if (drop) {
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    sendImages(e.dataTransfer.files);
  });
}

// --- reading study (issue 12) --------------------------------------------------------------------

$("study-form")?.addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  try {
    await api(`projects/${pid}`, {
      method: "PATCH",
      body: { readers_per_image: Number(f.readers_per_image.value), blind_mode: f.blind_mode.value },
    });
    toast("Study settings saved.", "ok");
    setTimeout(() => location.reload(), 400);
  } catch (err) {
    toastError(err, "Study settings not saved: ");
  }
});

/** Agreement per reader pair and per reader against the adjudication (Cohen's kappa, soft IoU). */
async function showReaderAgreement(box) {
  const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(2));
  try {
    const report = await api(`projects/${pid}/reader-agreement`);
    const rows = [
      ...report.pairs.map((p) => [p.readers.join(" · "), p]),
      ...report.vs_adjudication.map((r) => [`${r.reader} · adjudication`, r]),
    ];
    if (!rows.length) {
      box.innerHTML = '<p class="small muted">No image has two readings yet.</p>';
      return;
    }
    const table = document.createElement("table");
    table.className = "data small";
    table.id = "agreement-table";
    table.innerHTML = "<thead><tr><th scope='col'>Readers</th><th scope='col'>Images</th><th scope='col'>Label kappa</th><th scope='col'>Map soft IoU</th></tr></thead><tbody></tbody>";
    for (const [who, r] of rows) {
      const tr = table.tBodies[0].insertRow();
      for (const text of [who, String(r.images), `${fmt(r.kappa)} (${r.labelled})`, `${fmt(r.iou)} (${r.maps})`]) tr.insertCell().textContent = text;
    }
    box.replaceChildren(table);
  } catch (err) {
    box.textContent = "";
    toastError(err, "Reader agreement: ");
  }
}

if ($("reader-agreement")) showReaderAgreement($("reader-agreement"));
