// Project settings (managers): general facts, labels (add, rename, retire), training options,
// retraining and reading-study policy, members. Every change is a REST call; errors show the
// API's own message.

import { api, errorText } from "./api.js";
import { bootData, toast, toastError } from "./ui.js";

const boot = bootData();
const pid = boot.project.id;
const $ = (id) => document.getElementById(id);

async function patch(body, what) {
  try {
    await api(`projects/${pid}`, { method: "PATCH", body });
    toast(`${what} saved.`, "ok");
    return true;
  } catch (err) {
    toastError(err, `${what} not saved: `);
    return false;
  }
}

const reload = () => setTimeout(() => location.reload(), 400);

$("general-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  await patch({ name: f.name.value.trim(), description: f.description.value }, "General settings");
});

$("add-label-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const label = $("new-label").value.trim();
  if (label && (await patch({ labels: [...boot.project.labels, label] }, `Label “${label}”`))) reload();
});

for (const form of document.querySelectorAll(".rename-form")) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const to = form.to.value.trim();
    try {
      const res = await api(`projects/${pid}/labels/rename`, { method: "POST", body: { from: form.dataset.label, to } });
      const n = Object.values(res.changed).reduce((a, b) => a + b, 0);
      toast(`Renamed “${form.dataset.label}” to “${to}” (${n} rows).`, "ok");
      reload();
    } catch (err) {
      toastError(err, "Not renamed: ");
    }
  });
}

for (const box of document.querySelectorAll(".retire-toggle")) {
  box.addEventListener("change", async () => {
    const retired = new Set(boot.project.retired_labels);
    if (box.checked) retired.delete(box.dataset.label);
    else retired.add(box.dataset.label);
    if (await patch({ retired_labels: [...retired] }, "Labels")) reload();
    else box.checked = !box.checked;
  });
}

$("set-options").value = JSON.stringify(
  Object.fromEntries(Object.entries(boot.project.training).filter(([k]) => !["method", "epochs", "batch_size", "lr"].includes(k))),
  null,
  1,
);

$("training-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const error = $("training-error");
  error.textContent = "";
  let training;
  try {
    training = JSON.parse(f.options.value.trim() || "{}");
    if (typeof training !== "object" || Array.isArray(training) || training === null) throw new Error("not an object");
  } catch (err) {
    error.textContent = `Other options must be a JSON object (${err.message}).`;
    return;
  }
  training.method = f.method.value;
  for (const name of ["epochs", "batch_size", "lr"]) if (f[name].value !== "") training[name] = Number(f[name].value);
  try {
    await api(`projects/${pid}`, { method: "PATCH", body: { training } });
    toast("Training options saved.", "ok");
  } catch (err) {
    error.textContent = errorText(err);
    toastError(err, "Training options not saved: ");
  }
});

$("retrain-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  await patch(
    {
      retrain_enabled: f.retrain_enabled.checked,
      retrain_min_new: Number(f.retrain_min_new.value),
      activation_policy: f.activation_policy.value,
      next_policy: f.next_policy.value,
      readers_per_image: Number(f.readers_per_image.value),
      blind_mode: f.blind_mode.value,
    },
    "Retraining and reading settings",
  );
});

async function setMember(body, what) {
  try {
    await api(`projects/${pid}/members`, { method: "POST", body });
    toast(`${what} saved.`, "ok");
    return true;
  } catch (err) {
    toastError(err, `${what} not saved: `);
    return false;
  }
}

for (const row of document.querySelectorAll("#member-table tbody tr")) {
  const username = row.dataset.username;
  const role = row.querySelector(".member-role");
  const adjudicator = row.querySelector(".member-adjudicator");
  role.addEventListener("change", async () => {
    if (!(await setMember({ username, role: role.value }, `${username}'s role`))) reload();
  });
  adjudicator.addEventListener("change", async () => {
    if (!(await setMember({ username, role: role.value, adjudicator: adjudicator.checked }, `${username}'s adjudicator flag`))) reload();
  });
  row.querySelector(".member-remove").addEventListener("click", async () => {
    try {
      await api(`projects/${pid}/members/${encodeURIComponent(username)}`, { method: "DELETE" });
      row.remove();
      toast(`${username} removed.`, "ok");
    } catch (err) {
      toastError(err, "Not removed: ");
    }
  });
}

$("add-member-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  if (await setMember({ username: f.username.value.trim(), role: f.role.value }, `Member ${f.username.value.trim()}`)) reload();
});

document.body.dataset.ready = "true";
