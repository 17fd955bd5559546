// API tokens page: create (shown once), list, revoke.

import { api } from "./api.js";
import { el, fmtTime, toast, toastError } from "./ui.js";

const $ = (id) => document.getElementById(id);

async function load() {
  const tokens = await api("tokens");
  $("tokens").tBodies[0].replaceChildren(
    ...tokens.map((t) =>
      el(
        "tr",
        {},
        el("td", { text: t.name }),
        el("td", {}, el("code", { text: `${t.prefix}…` })),
        el("td", { class: "small", text: fmtTime(t.created_at) }),
        el("td", { class: "small", text: fmtTime(t.last_used_at) }),
        el("td", { class: "small", text: t.expires_at ? fmtTime(t.expires_at) : "never" }),
        el(
          "td",
          {},
          t.revoked_at
            ? el("span", { class: "badge danger", text: "revoked" })
            : el("button", {
                class: "btn small danger",
                type: "button",
                text: "Revoke",
                onclick: async () => {
                  try {
                    await api(`tokens/${t.id}`, { method: "DELETE" });
                    load();
                  } catch (err) {
                    toastError(err);
                  }
                },
              }),
        ),
      ),
    ),
  );
}

$("new-token").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  try {
    const body = { name: f.elements.namedItem("name").value.trim() };
    if (f.expires_in_days.value) body.expires_in_days = Number(f.expires_in_days.value);
    const created = await api("tokens", { method: "POST", body });
    $("token-value").textContent = created.token;
    $("token-shown").hidden = false;
    f.reset();
    load();
  } catch (err) {
    toastError(err, "Not created: ");
  }
});
$("token-copy").addEventListener("click", async () => {
  await navigator.clipboard.writeText($("token-value").textContent);
  toast("Copied.", "ok");
});
load()
  .catch(toastError)
  .finally(() => (document.body.dataset.ready = "true"));
