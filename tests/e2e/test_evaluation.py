"""The models page shows a model's evaluation: the ROC plot, the PAD error rates, the closed-set
and unseen-subtype numbers side by side, and the inverted-saliency sanity check with its reading."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.e2e.conftest import ADMIN, shot, wait_for_js
from tests.e2e.test_manage import _wait_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _pad_zip(n: int = 36) -> bytes:
    """Attacks (a bright patch; subtypes print and replay) and bona fide images (none), 32 px."""
    rng = np.random.default_rng(7)
    rows = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            kind = ("bona fide", "print", "replay")[i % 3]
            split = ("train", "train", "train", "val", "test")[i % 5] if i >= 6 else ("train", "test")[i % 2]
            img = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            mask = np.zeros((32, 32), dtype=np.uint8)
            if kind != "bona fide":
                y, x = rng.integers(2, 18, 2)
                img[y : y + 12, x : x + 12] = 230
                mask[y : y + 12, x : x + 12] = 255
            out = io.BytesIO()
            PILImage.fromarray(img).save(out, format="PNG")
            zf.writestr(f"images/p{i:03d}.png", out.getvalue())
            out = io.BytesIO()
            PILImage.fromarray(mask, mode="L").save(out, format="PNG")
            zf.writestr(f"saliency/p{i:03d}.png", out.getvalue())
            label = "bona fide" if kind == "bona fide" else "attack"
            rows.append(f"p{i:03d}.png,{label},{split},{'' if kind == 'bona fide' else kind}\n")
        zf.writestr("labels.csv", "image,label,split,subtype\n" + "".join(rows))
    return buf.getvalue()


def test_models_page_shows_roc_pad_open_set_and_the_sanity_check(new_page, world, workers):
    training = {"method": "sage", "backbone": "tiny", "image_size": 32, "epochs": 2, "batch_size": 8,
                "positive_label": "attack", "leave_out_subtype": "print"}  # fmt: skip
    with world.api(ADMIN) as api:
        r = api.post(
            "/projects", json={"name": "E2E PAD", "labels": ["attack", "bona fide"], "training": training}
        )
        r.raise_for_status()
        pid = r.json()["id"]
        api.post(f"/projects/{pid}/import", files={"file": ("pad.zip", _pad_zip())}).raise_for_status()
        run = api.post(f"/projects/{pid}/training-runs").json()
    done = _wait_run(world, run["id"], {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done.get("error")
    assert done["metrics"]["open_set"]["unseen"]["n"] > 0

    page = new_page(ADMIN)
    page.goto(f"/projects/{pid}/models")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#roc-chart polyline.roc-curve", state="attached")  # a perfect ROC is a flat line
    assert page.locator("#roc-chart polyline.roc-curve").count() == 2  # validation and test
    points = page.locator('#roc-chart polyline[data-split="test"]').get_attribute("points").split()
    assert len(points) == 101
    assert "AUROC" in page.locator("#roc-table").text_content()
    assert "BPCER @ APCER" in page.locator("#pad-table").text_content()
    open_set = page.locator("#open-set-table")
    header = open_set.locator("thead").text_content()  # CSS upper-cases headers
    assert "closed set (test)" in header and "unseen: print" in header
    assert "APCER at val threshold" in open_set.text_content()
    shot(page, "model-evaluation")

    page.click("#sanity-start")
    reading = page.locator(".sanity-reading")
    reading.wait_for()
    wait_for_js(
        page,
        "() => /maps matter|do not/.test(document.querySelector('.sanity-reading')?.textContent || '')",
        timeout=180,
    )
    shot(page, "model-sanity-check")
    with world.api(ADMIN) as api:
        models = api.get(f"/projects/{pid}/models").json()
    assert [m["active"] for m in models if m["config"]["method"] == "sage-inverted"] == [False]
    assert not page.js_errors, page.js_errors
