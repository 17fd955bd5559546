"""Model downloads, batch predictions and raw heatmaps: the API with a recording broker, and the
worker's job bodies run in-process on the same database and storage (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import zipfile

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.queue import TASK_EXPORT_MODEL, TASK_PREDICT_BATCH
from app.services import runs
from tests.worker.conftest import build_world, tiny_image
from tests.worker.test_runs import RecordingCelery, _Stack
from worker import jobs as worker_jobs
from worker import train_job
from worker.context import WorkerContext


@pytest.fixture
def world(settings):
    for w in build_world(_Stack(settings), n=8):
        w.client.app.state.celery = RecordingCelery()
        yield w


def train_model(world) -> int:
    """Train the tiny project in-process (no worker processes); returns the active model's id."""
    from app.tables import Project

    ctx = WorkerContext(world.stack.settings)
    with world.session() as s:
        run_id = runs.create_or_join_run(s, s.get(Project, world.project_id), None, {}).run.id
    summary = train_job.train_run(ctx, run_id, RecordingCelery())
    assert summary["status"] == "succeeded", summary
    return summary["model_id"]


def _sent(world, task):
    return [args for name, args in world.client.app.state.celery.sent if name == task]


def _viewer_headers(world) -> dict[str, str]:
    from app.services import projects, users
    from app.tables import Project

    with world.session() as s:
        viewer = users.create_user(s, "viewer", "correct horse battery")
        projects.set_member(s, s.get(Project, world.project_id), "viewer", "viewer")
        _, token = users.create_token(s, viewer, "t")
    return {"Authorization": f"Bearer {token}"}


def test_download_is_built_once_by_a_worker_then_served(world, monkeypatch, tmp_path):
    model_id = train_model(world)
    ctx = WorkerContext(world.stack.settings)
    url = f"/api/v1/models/{model_id}/download?format=onnx"
    first = world.get(url)
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["kind"] == "export" and job["status"] == "queued" and first.headers["Retry-After"]
    assert _sent(world, TASK_EXPORT_MODEL) == [[job["id"]]]
    again = world.get(url)
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert len(_sent(world, TASK_EXPORT_MODEL)) == 1  # asked twice, built once

    assert worker_jobs.export_model(ctx, job["id"])["status"] == "succeeded"
    assert worker_jobs.export_model(ctx, job["id"])["status"] == "not claimed"  # a redelivery
    polled = world.get(job["poll_url"]).json()
    assert polled["status"] == "succeeded" and polled["result_url"].endswith("format=onnx")
    served = world.get(url)
    assert served.status_code == 200 and served.headers["content-type"] == "application/zip"
    assert served.headers["x-checksum-sha256"] == hashlib.sha256(served.content).hexdigest()
    assert "model-v1-onnx.zip" in served.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(served.content)) as zf:
        card = json.loads(zf.read("model.json"))
        assert set(zf.namelist()) == {"model.onnx", "model.json", "SHA256SUMS"}
    assert card["labels"] == ["left", "right"] and card["model_version"] == 1
    assert card["lineage"]["annotations"] == 8 and card["lineage"]["model_checksum"]

    # the exported model answers like the served one
    from sage.export import read_archive

    archive = tmp_path / "m.zip"
    archive.write_bytes(served.content)
    assert read_archive(archive).labels == ["left", "right"]

    assert world.get(f"/api/v1/models/{model_id}/download?format=pickle").status_code == 422
    assert world.get("/api/v1/models/999999/download").status_code == 404
    viewer = _viewer_headers(world)
    assert world.client.get(url, headers=viewer).status_code == 403
    assert world.client.get(job["poll_url"], headers=viewer).status_code == 403

    # the same archive from the command line, without any worker
    import worker.__main__ as studio

    monkeypatch.setattr(studio, "get_settings", lambda: world.stack.settings)
    out = tmp_path / "cli.zip"
    assert studio.main(["model", "export", str(model_id), "--format", "torchscript", "--out", str(out)]) == 0
    assert read_archive(out).fmt == "torchscript"
    assert studio.main(["model", "export", "424242", "--format", "onnx", "--out", str(out)]) == 1


def test_a_failed_export_answers_409_until_retried(world):
    from app.tables import ModelVersion

    model_id = train_model(world)
    with world.session() as s:
        s.get(ModelVersion, model_id).checksum = "0" * 64  # the artifact no longer matches
        s.commit()
    url = f"/api/v1/models/{model_id}/download?format=state_dict"
    job = world.get(url).json()
    assert worker_jobs.export_model(WorkerContext(world.stack.settings), job["id"])["status"] == "failed"
    failed = world.get(url)
    assert failed.status_code == 409 and "SHA-256" in failed.json()["detail"]
    retried = world.get(url + "&retry=true")
    assert retried.status_code == 202 and retried.json()["id"] != job["id"]


def test_predict_batch_from_a_zip_and_from_files(world, monkeypatch):
    url = f"/api/v1/projects/{world.project_id}/predict-batch"
    left, _ = tiny_image("left", 101)
    assert world.post(url, files=[("files", ("a.png", left))]).status_code == 409  # no active model
    train_model(world)
    buf = io.BytesIO()
    big = PILImage.open(io.BytesIO(tiny_image("right", 102)[0])).resize((48, 40))
    big_png = io.BytesIO()
    big.save(big_png, format="PNG")
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("set/a.png", left)
        zf.writestr("set/b.png", big_png.getvalue())
        zf.writestr("set/c.png", b"not an image")
    answer = world.post(url, files=[("files", ("batch.zip", buf.getvalue()))], data={"heatmaps": "true"})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["kind"] == "predict_batch" and "input_key" not in job["params"]
    assert _sent(world, TASK_PREDICT_BATCH) == [[job["id"]]]  # the message carries the id, not the images
    assert world.get(f"/api/v1/jobs/{job['id']}/result").status_code == 409

    with world.session() as s:
        from app.tables import Job

        input_key = s.get(Job, job["id"]).params["input_key"]
    storage = WorkerContext(world.stack.settings).storage
    assert storage.exists(input_key)

    def whole(*args, **kwargs):
        raise AssertionError("the batch input or result was held whole in memory")

    with monkeypatch.context() as m:  # the worker streams the input and the result zip
        m.setattr(type(storage), "read_bytes", whole)
        m.setattr(type(storage), "put_bytes", whole)
        assert (
            worker_jobs.predict_batch(WorkerContext(world.stack.settings), job["id"])["status"] == "succeeded"
        )
    assert not storage.exists(input_key)  # the uploaded images are not kept after the job
    done = world.get(job["poll_url"]).json()
    assert (
        done["status"] == "succeeded" and done["progress"]["total"] == 3 and done["result"]["predicted"] == 2
    )
    result = world.get(done["result_url"])
    assert result.status_code == 200
    with zipfile.ZipFile(io.BytesIO(result.content)) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("predictions.csv").decode())))
        assert [r["image"] for r in rows] == ["set/a.png", "set/b.png"]
        assert all(r["label"] in ("left", "right") for r in rows)
        assert abs(float(rows[0]["p_left"]) + float(rows[0]["p_right"]) - 1) < 1e-4
        with PILImage.open(io.BytesIO(zf.read("heatmaps/set/b.png"))) as heat:
            assert heat.mode == "L" and heat.size == (48, 40)
        assert "set/c.png" in zf.read("errors.csv").decode()

    files = [("files", ("x.png", left)), ("files", ("x.png", left)), ("files", ("y.png", big_png.getvalue()))]
    second = world.post(url, files=files)
    assert second.status_code == 202
    worker_jobs.predict_batch(WorkerContext(world.stack.settings), second.json()["id"])
    with zipfile.ZipFile(io.BytesIO(world.get(f"/api/v1/jobs/{second.json()['id']}/result").content)) as zf:
        names = [r["image"] for r in csv.DictReader(io.StringIO(zf.read("predictions.csv").decode()))]
        assert names == ["x-2.png", "x.png", "y.png"] and "heatmaps/x.png" not in zf.namelist()
    mixed = world.post(url, files=[("files", ("a.png", left)), ("files", ("b.zip", buf.getvalue()))])
    assert mixed.status_code == 415
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no images")
    assert world.post(url, files=[("files", ("e.zip", empty.getvalue()))]).status_code == 422


def test_raw_heatmap_comes_back_at_the_image_size(world):
    from app.tables import ModelVersion
    from worker.prediction import predict_image

    model_id = train_model(world)
    with world.session() as s:
        model = s.scalars(select(ModelVersion).where(ModelVersion.id == model_id)).one()
        job = {"project_id": world.project_id, "model_id": model.id, "model_version": model.version,
               "artifact_key": model.artifact_key, "checksum": model.checksum}  # fmt: skip
    image = PILImage.open(io.BytesIO(tiny_image("left", 5)[0])).resize((53, 37))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    ctx = WorkerContext(world.stack.settings)
    request = {**job, "image_b64": base64.b64encode(buf.getvalue()).decode()}
    raw_only = predict_image(ctx, {**request, "heatmap": False, "raw_heatmap": True})
    assert "heatmap_png" not in raw_only
    with PILImage.open(io.BytesIO(base64.b64decode(raw_only["raw_heatmap_png"]))) as raw:
        assert raw.mode == "L" and raw.size == (53, 37)
    both = predict_image(ctx, {**request, "heatmap": True, "raw_heatmap": True})
    with PILImage.open(io.BytesIO(base64.b64decode(both["heatmap_png"]))) as overlay:
        assert overlay.mode == "RGB" and overlay.size == (53, 37)
    assert both["raw_heatmap_png"] == raw_only["raw_heatmap_png"]
    # the API forwards the choice to the worker
    sent = world.post(
        f"/api/v1/projects/{world.project_id}/predict?heatmap=bogus",
        files={"file": ("a.png", buf.getvalue())},
    )
    assert sent.status_code == 422


def test_the_inverted_sanity_check_never_activates(world):
    from app.queue import TASK_TRAIN
    from app.tables import ModelVersion

    model_id = train_model(world)
    with world.session() as s:  # make the twin sure to "beat" it: it must stay inactive anyway
        model = s.get(ModelVersion, model_id)
        model.metrics = {**model.metrics, "val_accuracy": 0.0, "test_accuracy": 0.0}
        s.commit()
    assert world.get(f"/api/v1/models/{model_id}/sanity-check").status_code == 404
    started = world.post(f"/api/v1/models/{model_id}/sanity-check")
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["status"] == "queued" and [body["run_id"]] in _sent(world, TASK_TRAIN)
    assert world.post(f"/api/v1/models/{model_id}/sanity-check").status_code == 409  # one at a time

    run = world.get(f"/api/v1/training-runs/{body['run_id']}").json()
    assert run["options"]["method"] == "sage-inverted"
    summary = train_job.train_run(WorkerContext(world.stack.settings), body["run_id"], RecordingCelery())
    assert summary["status"] == "succeeded" and summary["activated"] is False
    report = world.get(f"/api/v1/models/{model_id}/sanity-check").json()
    twin = report["inverted_model_id"]
    assert report["status"] == "succeeded" and twin and twin != model_id
    comparison = report["comparison"]
    assert comparison["original"] == 0.0 and comparison["maps_matter"] is False
    assert comparison["reading"].startswith("They do not")
    models = {m["id"]: m for m in world.get(f"/api/v1/projects/{world.project_id}/models").json()}
    assert models[model_id]["active"] is True and models[twin]["active"] is False
    refused = world.post(f"/api/v1/models/{twin}/activate")
    assert refused.status_code == 409 and "never activated" in refused.json()["detail"]
    assert world.post(f"/api/v1/models/{twin}/sanity-check").status_code == 422  # sage-inverted itself


def test_sanity_reading():
    from app.services.jobs import sanity_reading

    matter = sanity_reading({"test_accuracy": 0.9}, {"test_accuracy": 0.6})
    assert matter["maps_matter"] is True and matter["reading"].startswith("The maps matter")
    assert matter["drop"] == pytest.approx(0.3)
    assert sanity_reading({"val_accuracy": 0.9}, {"val_accuracy": 0.88})["maps_matter"] is False
    # one side without test numbers: compared on validation
    mixed = sanity_reading({"val_accuracy": 0.9, "test_accuracy": 0.8}, {"val_accuracy": 0.5})
    assert mixed["metric"] == "val_accuracy" and mixed["maps_matter"] is True
    # equal accuracy, but the inverted model ranks attacks no better than chance
    ranked = sanity_reading(
        {"test_accuracy": 0.5, "roc": {"test": {"auroc": 0.98}}},
        {"test_accuracy": 0.5, "roc": {"test": {"auroc": 0.5}}},
    )
    assert ranked["maps_matter"] is True and "AUROC falls from 0.980 to 0.500" in ranked["reading"]
