"""12-bit DICOM radiographs end to end with real worker processes: import a zip through the API,
train CE and SAGE through the API, compare them on a test split where the burned-in marker is
random, and predict a DICOM upload and the stored images with heatmaps on their own pixel grid."""

from __future__ import annotations

import base64
import io
import zipfile

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from app.tables import Prediction
from sage.synthetic import make_dataset
from tests.worker.conftest import wait_for, wait_run

pytestmark = pytest.mark.slow

N, HEIGHT = 240, 48  # images are 60x48 (not square); tiny trains at 48 px (a 12x12 CAM grid)
TRAINING = {"backbone": "tiny", "image_size": 48, "epochs": 8, "batch_size": 16, "seed": 0, "device": "cpu"}


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_sage_beats_ce_on_dicom_radiographs_through_the_api(world, tmp_path):
    stack = world.stack
    data = make_dataset("dicom-radiographs", tmp_path / "xr", n=N, seed=0, image_size=HEIGHT)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(data.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(data).as_posix())
    created = world.post(
        "/api/v1/projects",
        json={"name": "radiographs", "labels": ["nodule", "streak"], "backbone": "tiny", "image_size": 48,
              "activation_policy": "manual"},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    imported = world.post(f"/api/v1/projects/{pid}/import", files={"file": ("xr.zip", buf.getvalue())})
    assert imported.status_code == 201, imported.text
    assert imported.json()["imported"] == N and imported.json()["with_saliency"] == N
    first = world.get(f"/api/v1/projects/{pid}/images", params={"limit": 1}).json()["items"][0]
    assert (first["format"], first["width"], first["height"]) == ("dicom", 60, 48)
    assert first["pixels"]["bit_depth"] == 12 and first["pixels"]["default_window"] == {
        "center": 1400.0,
        "width": 1600.0,
    }

    stack.worker("train")
    stack.worker("predict")
    results = {}
    for method in ("ce", "sage"):
        r = world.post(
            f"/api/v1/projects/{pid}/training-runs", json={"training": {**TRAINING, "method": method}}
        )
        assert r.status_code == 202, r.text
        results[method] = wait_run(world, r.json()["id"], ("succeeded",), timeout=400)
    ce, sage = (results[m]["metrics"] for m in ("ce", "sage"))
    # Both fit the marker-carrying validation split; only SAGE transfers to the random-marker test split.
    assert ce["val_accuracy"] > 0.9, ce
    assert sage["test_accuracy"] >= ce["test_accuracy"] + 0.25, (sage["test_accuracy"], ce["test_accuracy"])

    # Activate SAGE: the project's images are predicted, heatmaps on each image's own grid.
    model_id = results["sage"]["model_id"]
    assert world.post(f"/api/v1/models/{model_id}/activate").status_code == 200

    def all_predicted():
        with world.session() as s:
            n = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.model_id == model_id))
            return n == N

    wait_for(all_predicted, 120, "the project's predictions")
    stored = world.get(f"/api/v1/images/{first['id']}/prediction").json()
    heat = PILImage.open(io.BytesIO(world.get(stored["heatmap_url"]).content))
    assert heat.size == (60, 48) and heat.mode == "L"
    assert PILImage.open(io.BytesIO(world.get(stored["overlay_url"]).content)).size == (60, 48)

    # A DICOM upload to predict: the heatmap overlay has the DICOM's width and height.
    dicom = next((data / "images").glob("*.dcm")).read_bytes()
    answer = world.post(f"/api/v1/projects/{pid}/predict", files={"file": ("q.dcm", dicom)})
    assert answer.status_code == 200, answer.text
    overlay = PILImage.open(io.BytesIO(base64.b64decode(answer.json()["heatmap_png"])))
    assert overlay.size == (60, 48)
