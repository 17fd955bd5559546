"""Adjudication in a real browser (issue 12): the disagreement list, every reading side by side,
a corrected map saved as the adjudication, and the next training run trains on it."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.e2e.conftest import ADMIN, ANNOTATOR, IMAGE_SIZE, LABELS, _png, drag, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _mask(rows: slice) -> bytes:
    w, h = IMAGE_SIZE
    arr = np.zeros((h, w), np.uint8)
    arr[rows] = 255
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_an_adjudicator_resolves_a_disagreement_and_the_next_run_trains_on_it(
    new_page, world, workers, tmp_path
):
    with world.api(ADMIN) as api:
        r = api.post(
            "/projects",
            json={
                "name": "E2E adjudication",
                "labels": LABELS[:2],
                "readers_per_image": 2,
                "training": {"epochs": 1},
            },
        )
        r.raise_for_status()
        pid = r.json()["id"]
        api.post(
            f"/projects/{pid}/members", json={"username": ANNOTATOR, "role": "annotator"}
        ).raise_for_status()
        ids = []
        for split, n in (("train", 6), ("val", 2), ("test", 2)):
            for i in range(n):
                label = LABELS[i % 2]
                files = [("files", (f"{split}{i}.png", _png(900 + len(ids)), "image/png"))]
                r = api.post(f"/projects/{pid}/images", files=files, data={"label": label, "split": split})
                r.raise_for_status()
                ids.append(r.json()["images"][0]["id"])
        iid = ids[0]
        # two readers disagree: labels and maps (top band against bottom band)
        api.put(
            f"/images/{iid}/annotation",
            data={"label": "cat"},
            files={"saliency": ("m.png", _mask(slice(0, 60)), "image/png")},
        ).raise_for_status()
    with world.api(ANNOTATOR) as api:
        api.put(
            f"/images/{iid}/annotation",
            data={"label": "dog"},
            files={"saliency": ("m.png", _mask(slice(180, 240)), "image/png")},
        ).raise_for_status()

    page = new_page(ADMIN)
    page.goto(f"/projects/{pid}/adjudicate")
    first = page.locator("#disagreements tbody tr").first
    assert first.get_attribute("data-image") == str(iid)
    assert first.get_attribute("data-label-disagreement") is not None
    shot(page, "adjudicate-list")
    first.locator("a").click()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#maps .map-card").count() == 3  # the mean and both readers
    page.click(f'#maps button[data-start="reader {ANNOTATOR}"]')
    page.wait_for_selector(f'#stage[data-source="reader {ANNOTATOR}"]')
    page.evaluate(
        "() => { const p = document.querySelector('.painter-stage').sagePainter; p.setSize(30); p.setHardness(1); p.setStrength(1); }"
    )
    page.locator("#stage").click(position={"x": 5, "y": 5})  # focus without painting outside the image
    drag(page, [(40, 120), (280, 120)])  # add the middle band
    page.keyboard.press("2")
    assert page.get_attribute('#labels button[data-label="dog"]', "aria-pressed") == "true"
    page.keyboard.press("Control+s")
    page.wait_for_selector('#adj-state[data-state="saved"]')
    shot(page, "adjudicate-saved")
    assert not page.js_errors, page.js_errors

    with world.api(ADMIN) as api:
        adj = api.get(f"/images/{iid}/adjudication").json()
        assert (adj["label"], adj["revision"], adj["has_saliency"]) == ("dog", 1, True)
        r = api.post(f"/projects/{pid}/training-runs", json={})
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        deadline = time.monotonic() + 240
        while True:
            run = api.get(f"/training-runs/{rid}").json()
            if run["status"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, run
            time.sleep(1)
        assert run["status"] == "succeeded", run
        assert run["lineage"]["adjudications"] == {str(adj["id"]): 1}
    # what that snapshot holds for the image: the adjudicated map (bands at 120 and 200), not the mean
    _, labels, maps = world.snapshot(tmp_path / "snap", pid)
    assert labels["train0.png"] == "dog" and "train0.png" in maps
    arr = np.asarray(PILImage.open(tmp_path / "snap" / "saliency" / "train0.png"))
    assert arr[120, 160] == 255 and arr[210, 160] == 255 and arr[30, 160] == 0
