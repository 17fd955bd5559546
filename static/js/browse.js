// Image browser: filters, keyset paging through the whole project, bulk actions (managers).

import { api } from "./api.js";
import { bootData, el, fmtNum, toast, toastError } from "./ui.js";

const boot = bootData();
const pid = boot.project.id;
const $ = (id) => document.getElementById(id);
const PAGE = 50;
const state = { cursor: null, next: null, page: 1, selected: new Set(), filters: {} };

function readFilters() {
  const params = {};
  for (const input of $("filters").elements) {
    if (input.name && input.value !== "") params[input.name] = input.value;
  }
  return params;
}

function row(im) {
  const link = el("a", { href: `/projects/${pid}/review/${im.id}`, text: im.original_name || `#${im.id}` });
  const cells = [
    el("td", {}, link),
    el("td", { text: im.split ?? "–" }),
    el("td", { text: im.label ?? "–" }),
    el("td", { text: String(im.annotation_count) }),
    el("td", { text: fmtNum(im.agreement?.iou, 2) }),
  ];
  if (boot.can_manage) {
    const box = el("input", { type: "checkbox", "aria-label": `select ${im.original_name || im.id}` });
    box.checked = state.selected.has(im.id);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(im.id);
      else state.selected.delete(im.id);
      $("selected-count").textContent = state.selected.size;
    });
    cells.unshift(el("td", {}, box));
  }
  const tr = el("tr", {}, ...cells);
  tr.dataset.imageId = im.id;
  return tr;
}

async function load(cursor) {
  const params = new URLSearchParams({ ...state.filters, limit: String(PAGE) });
  if (cursor) params.set("cursor", cursor);
  try {
    const page = await api(`projects/${pid}/images?${params}`);
    state.cursor = cursor;
    state.next = page.next_cursor;
    const body = $("image-table").tBodies[0];
    body.replaceChildren(...page.items.map(row));
    if (!page.items.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "No image matches." })));
    $("next-page").disabled = !page.next_cursor;
    $("page-info").textContent = `Page ${state.page} · ${page.items.length} image${page.items.length === 1 ? "" : "s"}`;
  } catch (err) {
    toastError(err, "Images: ");
  }
  document.body.dataset.ready = "true";
}

$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  state.filters = readFilters();
  state.page = 1;
  state.selected.clear();
  if ($("selected-count")) $("selected-count").textContent = "0";
  load(null);
});
$("next-page").addEventListener("click", () => {
  state.page += 1;
  load(state.next);
});
$("first-page").addEventListener("click", () => {
  state.page = 1;
  load(null);
});

if (!boot.can_filter_others) {
  // blind reading: filters on other readers' work are for managers and adjudicators
  for (const name of ["status", "label_disagreement", "max_agreement"]) $("filters").elements[name].disabled = true;
  const reader = $("f-reader");
  for (const option of reader.options) if (option.value && option.value !== boot.me) option.disabled = true;
}

const bulk = $("bulk");
if (bulk) {
  const showFields = () => {
    for (const field of bulk.querySelectorAll("[data-for]")) field.hidden = field.dataset.for !== bulk.action.value;
  };
  bulk.action.addEventListener("change", showFields);
  showFields();
  $("select-page").addEventListener("click", () => {
    for (const box of $("image-table").querySelectorAll("tbody input[type=checkbox]")) {
      box.checked = true;
      box.dispatchEvent(new Event("change"));
    }
  });
  bulk.addEventListener("submit", async (e) => {
    e.preventDefault();
    const ids = [...state.selected];
    if (!ids.length) {
      toast("Select images first.", "error");
      return;
    }
    const action = bulk.action.value;
    if (action === "delete" && !confirm(`Delete ${ids.length} image${ids.length === 1 ? "" : "s"} with their readings?`)) return;
    const body = { image_ids: ids, action };
    if (action === "set_split") body.split = bulk.split.value;
    if (action === "set_label") body.label = bulk.label.value;
    try {
      const res = await api(`projects/${pid}/images/bulk`, { method: "POST", body });
      toast(`${res.changed} image${res.changed === 1 ? "" : "s"} changed.`, "ok");
      state.selected.clear();
      $("selected-count").textContent = "0";
      load(state.cursor);
    } catch (err) {
      toastError(err, "Bulk action failed: ");
    }
  });
}

load(null);
