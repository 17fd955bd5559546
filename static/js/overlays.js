// Image + colour-mapped saliency cards, shared by the review and predictions pages.

import { colorizeMap, el } from "./ui.js";

/** A picture box: the image, with a colour-mapped map over it once it has loaded. */
export function mapPicture(imageUrl, mapUrl, alt) {
  const box = el("div", { class: "pic" }, el("img", { src: imageUrl, alt, loading: "lazy" }));
  if (mapUrl) {
    colorizeMap(mapUrl)
      .then((canvas) => box.append(canvas))
      .catch((err) => {
        console.error(err);
        box.append(el("span", { class: "badge danger", style: "position:absolute;left:6px;top:6px", text: "map failed to load" }));
      });
  }
  return box;
}

/** Wire a show/hide checkbox and an opacity slider to every .overlay-layer on the page. */
export function overlayControls(toggle, slider) {
  const apply = () => {
    document.body.classList.toggle("overlays-off", !toggle.checked);
    document.documentElement.style.setProperty("--overlay-opacity", String(slider ? slider.value / 100 : 0.65));
  };
  toggle.addEventListener("change", apply);
  slider?.addEventListener("input", apply);
  document.addEventListener("keydown", (e) => {
    if ((e.key === "h" || e.key === "H") && !(e.target instanceof HTMLInputElement && e.target.type !== "checkbox")) {
      toggle.checked = !toggle.checked;
      apply();
    }
  });
  apply();
}
