"""End to end with real worker processes, on the embedded broker (SQLite) and on Redis (PostgreSQL):
annotate -> train -> model activated -> project predicted -> predict an upload with a heatmap."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from app.queue import TASK_TRAIN
from app.storage import get_storage
from app.tables import ModelVersion, Prediction, TrainingEvent
from tests.worker.conftest import tiny_image, wait_for, wait_run

pytestmark = pytest.mark.slow


def read_sse(world, run_id: int) -> list[tuple[str, dict]]:
    events = []
    with world.client.stream(
        "GET", f"/api/v1/training-runs/{run_id}/events", headers=world.headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    return events


def test_train_activate_predict(world):
    stack = world.stack
    stack.worker("train")
    # A second training worker consumes the same queue: a duplicated message reaches both at once.
    stack.worker("train")
    stack.worker("predict")

    assert (
        world.post(
            f"/api/v1/projects/{world.project_id}/predict",
            files={"file": ("a.png", tiny_image("left", 99)[0])},
        ).status_code
        == 409
    )

    response = world.post(f"/api/v1/projects/{world.project_id}/training-runs", json={})
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["status"] in ("queued", "running") and run["joined"] is False
    # The broker delivers the same job again (redelivery, a retry, a second beat): trains once.
    world.client.app.state.celery.send_task(TASK_TRAIN, args=[run["id"]])
    joined = world.post(f"/api/v1/projects/{world.project_id}/training-runs", json={})
    assert joined.status_code == 202 and joined.json()["id"] == run["id"] and joined.json()["joined"] is True

    events = read_sse(world, run["id"])  # ends when the run is finished
    kinds = [k for k, _ in events]
    assert "progress" in kinds and "epoch" in kinds, kinds
    assert events[-1] == ("end", {"status": "succeeded"}), events[-3:]
    epoch_events = [d for k, d in events if k == "epoch"]
    assert epoch_events[-1]["epoch"] == 2 and "val" in epoch_events[-1] and "eta_s" in epoch_events[-1]

    done = wait_run(world, run["id"], ("succeeded",))
    assert done["attempts"] == 1
    assert done["metrics"]["val_accuracy"] is not None
    assert len(done["lineage"]["annotations"]) == 24 and "snapshot_at" in done["lineage"]
    with world.session() as s:
        running_events = s.scalar(
            select(func.count())
            .select_from(TrainingEvent)
            .where(
                TrainingEvent.run_id == run["id"],
                TrainingEvent.kind == "status",
                TrainingEvent.data["status"].as_string() == "running",
            )
        )
        assert running_events == 1, "the duplicated message must not start a second copy"
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1

    models = world.get(f"/api/v1/projects/{world.project_id}/models").json()
    assert len(models) == 1 and models[0]["active"] is True and models[0]["id"] == done["model_id"]
    with world.session() as s:
        checksum = s.get(ModelVersion, done["model_id"]).checksum
    weights = [k for k in get_storage(stack.settings).iter_keys() if k.endswith(".pt")]
    assert weights == [f"{checksum}.pt"], "one model object, content-addressed, no partial copy"

    # After activation every image of the project is predicted and stored.
    def all_predicted():
        with world.session() as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(Prediction)
                    .where(Prediction.model_id == done["model_id"])
                )
                == 24
            )

    wait_for(all_predicted, 90, "the project's predictions")
    stored = world.get(f"/api/v1/images/{world.image_ids[0]}/prediction")
    assert stored.status_code == 200, stored.text
    body = stored.json()
    assert body["label"] in ("left", "right") and 0 <= body["uncertainty"] <= 1
    assert body["alignment"] is not None and set(body["alignment_detail"]) == {
        "soft_iou",
        "pearson",
        "pointing_game",
    }
    heat = world.get(body["heatmap_url"])
    assert heat.status_code == 200 and PILImage.open(io.BytesIO(heat.content)).size == (32, 32)
    overlay = world.get(body["overlay_url"])
    assert overlay.status_code == 200 and PILImage.open(io.BytesIO(overlay.content)).mode == "RGB"
    gallery = world.get(
        f"/api/v1/projects/{world.project_id}/predictions", params={"sort": "misalignment", "limit": 5}
    ).json()
    assert len(gallery) == 5
    assert [g["alignment"] for g in gallery] == sorted(g["alignment"] for g in gallery)

    # Predict an upload, synchronously ...
    image_png = tiny_image("right", 1234)[0]
    answer = world.post(f"/api/v1/projects/{world.project_id}/predict", files={"file": ("x.png", image_png)})
    assert answer.status_code == 200, answer.text
    answer = answer.json()
    assert answer["model_id"] == done["model_id"] and answer["model_version"] == 1
    assert set(answer["probabilities"]) == {"left", "right"}
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-4
    overlay = PILImage.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
    assert overlay.size == (32, 32)
    # ... and as a job to poll.
    job = world.post(
        f"/api/v1/projects/{world.project_id}/predict",
        params={"async": "true"},
        files={"file": ("x.png", image_png)},
    )
    assert job.status_code == 202, job.text

    def job_done():
        polled = world.get(job.json()["poll_url"]).json()
        return polled if polled["status"] in ("succeeded", "failed") else None

    polled = wait_for(job_done, 30, "the async prediction")
    assert polled["status"] == "succeeded" and polled["result"]["label"] == answer["label"]

    # A bad upload is refused before anything is queued.
    bad = world.post(
        f"/api/v1/projects/{world.project_id}/predict", files={"file": ("x.png", b"not an image")}
    )
    assert bad.status_code == 415
