"""A 12-bit DICOM in the painter: shown through its header window, re-windowed from the numeric
fields and with the drag gesture (which must not paint), painted and saved at the image's size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from sage import imageio
from sage.synthetic import dicom_bytes
from tests.e2e.conftest import ADMIN, ANNOTATOR, drag, open_painter, shot, wait_for_js

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 300, 200  # not the other e2e images' size, and not square


def _radiograph() -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = 800 + 2400 * x / WIDTH + 300 * np.sin(y / 9.0)  # a 12-bit ramp with texture
    pixels[60:140, 200:260] += 500  # a brighter "finding"
    return np.clip(pixels, 0, 4095).astype(np.uint16)


def _shown_pixel(page, x: int, y: int) -> int:
    """The grey level the painter's current image has at image pixel (x, y)."""
    return page.evaluate(
        """([x, y]) => {
            const img = document.querySelector('.painter-stage').sagePainter.image;
            const c = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
            const ctx = c.getContext("2d");
            ctx.drawImage(img, 0, 0);
            return ctx.getImageData(x, y, 1, 1).data[0];
        }""",
        [x, y],
    )


def _wait_rendered(page, center: str, width: str, invert: str = "0") -> None:
    wait_for_js(
        page,
        """([c, w, i]) => {
            const src = document.querySelector('.painter-stage').sagePainter.image.src;
            const s = document.getElementById("stage");
            return s.dataset.windowLoading === "false" && src.includes(`center=${c}`) &&
                src.includes(`width=${w}`) && src.includes(`invert=${i}`);
        }""",
        arg=[center, width, invert],
    )


def test_dicom_window_level_paint_and_save(new_page, world):
    pixels = _radiograph()
    with world.api(ADMIN) as api:
        r = api.post(
            f"/projects/{world.project_id}/images",
            files={"files": ("chest.dcm", dicom_bytes(pixels, bits_stored=12, window=(2000, 1000)))},
        )
        assert r.status_code == 201, r.text
        image = r.json()["images"][0]
    iid = image["id"]
    assert image["pixels"]["bit_depth"] == 12 and image["format"] == "dicom"

    page = new_page(ANNOTATOR)
    open_painter(page, world.project_id, iid)
    # shown through the header window, at full resolution
    assert page.evaluate(
        "[document.querySelector('.painter-stage').sagePainter.image.naturalWidth, document.querySelector('.painter-stage').sagePainter.image.naturalHeight]"
    ) == [
        WIDTH,
        HEIGHT,
    ]
    assert page.input_value("#wl-center") == "2000" and page.input_value("#wl-width") == "1000"
    expected = imageio.render_8bit(pixels, 2000, 1000)
    assert abs(_shown_pixel(page, 150, 100) - int(expected[100, 150])) <= 1
    shot(page, "annotate-dicom-header-window")

    # numeric window: the whole 12-bit range
    page.fill("#wl-center", "2048")
    page.fill("#wl-width", "4096")
    page.press("#wl-width", "Enter")
    _wait_rendered(page, "2048", "4096")
    expected = imageio.render_8bit(pixels, 2048, 4096)
    for x, y in [(10, 10), (150, 100), (230, 100), (290, 190)]:
        assert abs(_shown_pixel(page, x, y) - int(expected[y, x])) <= 1

    # invert from the keyboard, then the W/L drag gesture, which changes the window and paints nothing
    page.locator("#stage").focus()
    page.keyboard.press("i")
    _wait_rendered(page, "2048", "4096", "1")
    assert abs(_shown_pixel(page, 150, 100) - (255 - int(expected[100, 150]))) <= 1
    page.keyboard.press("i")
    page.keyboard.press("w")
    assert page.get_attribute("#wl-mode", "aria-pressed") == "true"
    drag(page, [(150, 100), (200, 70)])
    wait_for_js(page, "document.getElementById('stage').dataset.windowLoading === 'false'")
    assert float(page.input_value("#wl-width")) > 4096  # dragged right: wider
    assert float(page.input_value("#wl-center")) > 2048  # dragged up: higher level
    assert page.evaluate("document.querySelector('.painter-stage').sagePainter.hasPaint()") is False
    page.keyboard.press("w")
    shot(page, "annotate-dicom-windowed")

    # paint the finding, label, save: the stored map has the DICOM's size
    page.evaluate(
        "() => { const p = document.querySelector('.painter-stage').sagePainter; p.setSize(30); p.setHardness(1); p.setStrength(1); }"
    )
    page.keyboard.press("2")
    drag(page, [(205, 100), (255, 100)])
    page.click("#save")
    page.wait_for_selector('#save-state[data-state="saved"]')
    with world.api(ANNOTATOR) as api:
        ann = api.get(f"/images/{iid}/annotation").json()
        mask = PILImage.open(io.BytesIO(api.get(f"{world.base_url}{ann['saliency_url']}").content))
    assert ann["label"] == world_label(world, 2)
    assert mask.mode == "L" and mask.size == (WIDTH, HEIGHT)
    arr = np.asarray(mask)
    assert arr[100, 230] > 200 and arr[:40].max() == 0 and arr[:, :150].max() == 0
    assert not page.js_errors, page.js_errors


def world_label(world, key: int) -> str:
    from tests.e2e.conftest import LABELS

    return LABELS[key - 1]
