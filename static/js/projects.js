// Projects page: create a project (site admins).
import { api } from "./api.js";
import { toastError } from "./ui.js";

const dialog = document.getElementById("new-project");
if (dialog) {
  document.getElementById("new-project-open").addEventListener("click", () => dialog.showModal());
  dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
  document.getElementById("new-project-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const labels = String(f.get("labels")).split(",").map((s) => s.trim()).filter(Boolean);
    try {
      const project = await api("projects", {
        method: "POST",
        body: { name: String(f.get("name")).trim(), labels, description: String(f.get("description") || "") },
      });
      location.assign(`/projects/${project.id}`);
    } catch (err) {
      toastError(err, "Could not create the project: ");
    }
  });
}
