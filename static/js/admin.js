// Admin page: users (create, deactivate, admin flag) and project members.

import { api } from "./api.js";
import { bootData, el, toast, toastError } from "./ui.js";

const boot = bootData();
const $ = (id) => document.getElementById(id);

async function loadUsers() {
  const users = await api("users");
  $("usernames").replaceChildren(...users.map((u) => el("option", { value: u.username })));
  $("users").tBodies[0].replaceChildren(
    ...users.map((u) => {
      const self = u.id === boot.me.id;
      const toggle = (field, value, label) =>
        el("button", {
          class: "btn small",
          type: "button",
          text: label,
          disabled: self,
          title: self ? "You cannot change your own account here" : undefined,
          onclick: async () => {
            try {
              await api(`users/${u.id}`, { method: "PATCH", body: { [field]: value } });
              loadUsers();
            } catch (err) {
              toastError(err);
            }
          },
        });
      return el(
        "tr",
        {},
        el("td", {}, el("strong", { text: u.username })),
        el("td", {}, u.is_admin ? el("span", { class: "badge admin", text: "admin" }) : "user"),
        el("td", {}, el("span", { class: `badge ${u.is_active ? "ok" : "danger"}`, text: u.is_active ? "active" : "deactivated" })),
        el(
          "td",
          { class: "row" },
          toggle("is_active", !u.is_active, u.is_active ? "Deactivate" : "Reactivate"),
          toggle("is_admin", !u.is_admin, u.is_admin ? "Revoke admin" : "Make admin"),
        ),
      );
    }),
  );
}

async function loadMembers() {
  const pid = $("member-project").value;
  if (!pid) return;
  const members = await api(`projects/${pid}/members`);
  $("members").tBodies[0].replaceChildren(
    ...members.map((m) =>
      el(
        "tr",
        {},
        el("td", { text: m.username }),
        el("td", {}, el("span", { class: `badge ${m.role}`, text: m.role })),
        el(
          "td",
          {},
          el("button", {
            class: "btn small danger",
            type: "button",
            text: "Remove",
            onclick: async () => {
              try {
                await api(`projects/${pid}/members/${encodeURIComponent(m.username)}`, { method: "DELETE" });
                loadMembers();
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

$("new-user").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  try {
    await api("users", {
      method: "POST",
      body: { username: f.username.value.trim(), password: f.password.value, is_admin: f.is_admin.checked },
    });
    toast(`User ${f.username.value} created.`, "ok");
    f.reset();
    loadUsers();
  } catch (err) {
    toastError(err, "Not created: ");
  }
});

$("add-member").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  try {
    await api(`projects/${$("member-project").value}/members`, {
      method: "POST",
      body: { username: f.username.value.trim(), role: f.role.value },
    });
    f.reset();
    loadMembers();
  } catch (err) {
    toastError(err, "Not saved: ");
  }
});
$("member-project").addEventListener("change", () => loadMembers().catch(toastError));

Promise.all([loadUsers(), loadMembers()])
  .catch((err) => toastError(err))
  .finally(() => (document.body.dataset.ready = "true"));
