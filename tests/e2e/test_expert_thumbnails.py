"""A 12-bit DICOM in the image lists: the project page's thumbnails and the predictions gallery
show it through display.png with its default (header) window, not an 8-bit clip of the raw values
(which would be all white) and not a broken image."""

from __future__ import annotations

import numpy as np
import pytest

from sage import imageio
from sage.synthetic import dicom_bytes
from tests.e2e.conftest import ADMIN, shot, wait_for_js

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 180, 120
WINDOW = (2000.0, 1000.0)
POINTS = [(5, 5), (60, 40), (90, 60), (130, 100), (175, 115)]


def _radiograph() -> np.ndarray:
    """12-bit values 800..3400: every pixel above 255, so a clip to 8 bits is all white."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = 800 + 2600 * x / WIDTH + 200 * np.sin(y / 7.0)
    return np.clip(pixels, 0, 4095).astype(np.uint16)


def _rendered(page, selector: str) -> dict:
    """The img's URL, natural size, grey levels at POINTS and overall min/max, read back through a
    canvas once it has loaded (same origin, so the pixels are readable)."""
    img = page.locator(selector)
    img.scroll_into_view_if_needed()  # thumbnails load lazily
    wait_for_js(page, "el => el.complete && el.naturalWidth > 0", img.element_handle(), timeout=15)
    return img.evaluate(
        """(img, points) => {
            const c = document.createElement("canvas");
            c.width = img.naturalWidth;
            c.height = img.naturalHeight;
            const ctx = c.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const data = ctx.getImageData(0, 0, c.width, c.height).data;
            let lo = 255, hi = 0;
            for (let i = 0; i < data.length; i += 4) { lo = Math.min(lo, data[i]); hi = Math.max(hi, data[i]); }
            const at = points.map(([x, y]) => data[4 * (y * c.width + x)]);
            return { src: img.currentSrc, w: img.naturalWidth, h: img.naturalHeight, lo, hi, at };
        }""",
        POINTS,
    )


def _check(shown: dict, iid: int, expected: np.ndarray) -> None:
    assert f"/api/v1/images/{iid}/display.png" in shown["src"]
    assert (shown["w"], shown["h"]) == (WIDTH, HEIGHT)
    assert shown["lo"] == 0 and shown["hi"] == 255  # neither all white nor all black: the window
    for (x, y), value in zip(POINTS, shown["at"], strict=True):
        assert abs(value - int(expected[y, x])) <= 1, ((x, y), value, int(expected[y, x]))


def test_dicom_thumbnail_and_prediction_gallery_use_the_default_window(new_page, world):
    from app.db import make_engine, make_session_factory
    from app.tables import ModelVersion, Prediction

    pixels = _radiograph()
    expected = imageio.render_8bit(pixels, *WINDOW)
    assert expected.min() == 0 and expected.max() == 255
    with world.api(ADMIN) as api:
        r = api.post("/projects", json={"name": "E2E DICOM lists", "labels": ["normal", "finding"]})
        r.raise_for_status()
        pid = r.json()["id"]
        r = api.post(
            f"/projects/{pid}/images",
            files={"files": ("thumb.dcm", dicom_bytes(pixels, bits_stored=12, window=WINDOW))},
        )
        assert r.status_code == 201, r.text
        iid = r.json()["images"][0]["id"]
    # An active model with a stored prediction for the image (no worker needed for the gallery)
    engine = make_engine(world.settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            model = ModelVersion(
                project_id=pid, version=1, artifact_key="x", checksum="0" * 64, backbone="tiny", active=True
            )
            session.add(model)
            session.flush()
            session.add(
                Prediction(
                    image_id=iid, model_id=model.id, label="finding", confidence=0.7, uncertainty=0.3,
                    probabilities={"normal": 0.3, "finding": 0.7},
                )
            )  # fmt: skip
            session.commit()
    finally:
        engine.dispose()

    page = new_page(ADMIN)
    page.goto(f"/projects/{pid}")
    _check(_rendered(page, f'.thumbs a.thumb[href$="/{iid}"] img'), iid, expected)
    shot(page, "project-dicom-thumbnail")

    page.goto(f"/projects/{pid}/predictions")
    page.wait_for_selector("body[data-ready=true]")
    card = f'.pred-card[data-image-id="{iid}"]'
    page.wait_for_selector(card)
    for selector in (f"{card} figure:first-child img", f"{card} figure:nth-child(2) img"):
        _check(_rendered(page, selector), iid, expected)
    shot(page, "predictions-dicom")
    assert page.js_errors == []
