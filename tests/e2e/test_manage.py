"""Managing a project in the browser: uploading images, importing a dataset zip (and a bad one that
must change nothing), cancelling a running training run, and activating an older model version.
Each test works on a project of its own."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.e2e.conftest import ADMIN, PASSWORD, _png, shot

pytestmark = [pytest.mark.browser]


def _new_project(world, name: str, **fields) -> int:
    with world.api(ADMIN) as api:
        r = api.post("/projects", json={"name": name, "labels": ["round", "square"], **fields})
        r.raise_for_status()
        return r.json()["id"]


def _images(world, pid: int) -> list[dict]:
    with world.api(ADMIN) as api:
        r = api.get(f"/projects/{pid}/images", params={"limit": 200})
        r.raise_for_status()
        return r.json()["items"]


def _dataset_zip(rows: list[tuple[str, str, str]], seed: int, missing: str | None = None) -> bytes:
    """A dataset folder (DESIGN.md section 3) as a zip; `missing` is named in labels.csv but left out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.csv", "image,label,split\n" + "".join(f"{n},{lab},{sp}\n" for n, lab, sp in rows))
        for i, (name, _, _) in enumerate(rows):
            if name == missing:
                continue
            zf.writestr(f"images/{name}", _png(seed + i, size=(48, 40)))
            mask = np.zeros((40, 48), dtype=np.uint8)
            mask[10:30, 12:36] = 200
            out = io.BytesIO()
            PILImage.fromarray(mask, mode="L").save(out, format="PNG")
            zf.writestr(f"saliency/{name.rsplit('.', 1)[0]}.png", out.getvalue())
    return buf.getvalue()


def test_upload_and_zip_import_add_images_and_a_bad_zip_changes_nothing(new_page, world, tmp_path):
    pid = _new_project(world, "E2E uploads")
    page = new_page(ADMIN)
    page.goto(f"/projects/{pid}")

    # Upload two images with a label chosen in the form.
    files = []
    for i in range(2):
        path = tmp_path / f"up{i}.png"
        path.write_bytes(_png(100 + i, size=(64, 48)))
        files.append(str(path))
    page.select_option("#upload-label", "square")
    with page.expect_navigation():  # the page reloads itself after saying so
        page.set_input_files("#upload-files", files)
        page.wait_for_selector("#upload-status:has-text('Added 2 images')")
    images = _images(world, pid)
    assert sorted(im["label"] for im in images) == ["square", "square"]

    # A zip whose labels.csv names a file that is not there: rejected with the file and line.
    bad = tmp_path / "bad.zip"
    bad.write_bytes(
        _dataset_zip([("a.png", "round", "train"), ("b.png", "square", "val")], 7, missing="b.png")
    )
    page.goto(f"/projects/{pid}")
    page.set_input_files("#import-zip", str(bad))
    toast = page.locator(".toast", has_text="Import failed")
    toast.wait_for()
    assert "line 3" in toast.inner_text() and "b.png" in toast.inner_text()
    shot(page, "import-rejected")
    assert len(_images(world, pid)) == 2  # nothing half-imported

    # The same zip, complete: three images with labels, splits and saliency maps.
    good = tmp_path / "good.zip"
    rows = [("a.png", "round", "train"), ("b.png", "square", "val"), ("c.png", "round", "test")]
    good.write_bytes(_dataset_zip(rows, 7))
    with page.expect_navigation():
        page.set_input_files("#import-zip", str(good))
        page.wait_for_selector("#upload-status:has-text('Imported 3 images')")
    images = _images(world, pid)
    assert len(images) == 5
    imported = {
        im["original_name"]: im for im in images if im["original_name"] in {"a.png", "b.png", "c.png"}
    }
    assert {n: (im["label"], im["split"]) for n, im in imported.items()} == {
        n: (lab, sp) for n, lab, sp in rows
    }
    assert all(im["has_import_saliency"] for im in imported.values())
    assert not page.js_errors, page.js_errors


def _wait_run(world, rid: int, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    with world.api(ADMIN) as api:
        while True:
            run = api.get(f"/training-runs/{rid}").json()
            if run["status"] in statuses:
                return run
            assert time.monotonic() < deadline, f"run {rid} stayed {run['status']}"
            time.sleep(0.5)


@pytest.mark.slow
def test_cancel_a_running_run_then_activate_an_older_model(new_page, world, workers):
    pid = _new_project(world, "E2E models", image_size=32, activation_policy="manual")
    with world.api(ADMIN) as api:
        for label, seeds in (("round", range(200, 206)), ("square", range(300, 306))):
            files = [("files", (f"{s}.png", _png(s, size=(40, 40)), "image/png")) for s in seeds]
            api.post(f"/projects/{pid}/images", files=files, data={"label": label}).raise_for_status()

    # A long run, cancelled from the models page while it trains.
    page = new_page(ADMIN)
    page.goto(f"/projects/{pid}/models")
    with world.api(ADMIN) as api:
        api.patch(f"/projects/{pid}", json={"training": {"epochs": 5000}}).raise_for_status()
    page.click("#train-now")
    row = page.locator('#runs tr[data-status="running"]')
    row.wait_for(timeout=120_000)
    rid = int(row.get_attribute("data-run-id"))
    row.get_by_role("button", name="Cancel").click()
    page.wait_for_selector(f'#runs tr[data-run-id="{rid}"][data-status="cancelled"]', timeout=60_000)
    shot(page, "run-cancelled")
    with world.api(ADMIN) as api:
        assert api.get(f"/projects/{pid}/models").json() == []  # a cancelled run leaves no model

    # Two short runs give two versions; under the manual policy neither is activated by itself.
    with world.api(ADMIN) as api:
        api.patch(f"/projects/{pid}", json={"training": {"epochs": 1}}).raise_for_status()
        for _ in range(2):
            run = api.post(f"/projects/{pid}/training-runs").json()
            assert _wait_run(world, run["id"], {"succeeded", "failed"})["status"] == "succeeded"
        models = {m["version"]: m for m in api.get(f"/projects/{pid}/models").json()}
    assert sorted(models) == [1, 2] and not any(m["active"] for m in models.values())

    page.goto(f"/projects/{pid}/models")
    for version in (2, 1):  # activate the newest, then roll back to the older one
        row = page.locator(f'#models tr[data-model-id="{models[version]["id"]}"]')
        row.get_by_role("button", name="Activate").click()
        row.locator(".badge.ok").wait_for()
        with world.api(ADMIN) as api:
            active = [m["version"] for m in api.get(f"/projects/{pid}/models").json() if m["active"]]
        assert active == [version]
    other = page.locator(f'#models tr[data-model-id="{models[2]["id"]}"]')
    assert other.get_by_role("button", name="Activate").is_visible()
    shot(page, "model-rolled-back")
    assert not page.js_errors, page.js_errors


def test_a_viewer_can_look_but_the_painter_refuses_them(new_page, world):
    pid = _new_project(world, "E2E viewers")
    with world.api(ADMIN) as api:
        api.post("/users", json={"username": "e2e-viewer", "password": PASSWORD}).raise_for_status()
        api.post(
            f"/projects/{pid}/members", json={"username": "e2e-viewer", "role": "viewer"}
        ).raise_for_status()
        files = [("files", ("v.png", _png(400, size=(40, 40)), "image/png"))]
        iid = api.post(f"/projects/{pid}/images", files=files).json()["images"][0]["id"]
    page = new_page("e2e-viewer")
    assert page.goto(f"/projects/{pid}").status == 200
    for url in (f"/projects/{pid}/annotate", f"/projects/{pid}/annotate/{iid}"):
        response = page.goto(url)
        assert response.status == 403
        assert "Annotators only" in page.content()
    assert page.goto(f"/projects/{pid}/review/{iid}").status == 200  # looking is allowed
