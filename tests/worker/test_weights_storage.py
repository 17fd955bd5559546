"""Pretrained weights for a fleet (a real S3 server, moto): `sage-studio weights add` run by another
process on "another machine" stores the file in the object storage; a worker whose weights folder
is empty fetches it, checked by its hash, and trains with it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from app.settings import Settings
from sage.backbones import create_model
from sage.weights import WeightsError
from tests.worker.conftest import ROOT, TINY_TRAINING, build_world
from tests.worker.test_runs import RecordingCelery, _Stack
from worker import train_job
from worker.context import WorkerContext


@pytest.fixture
def settings(database_url, tmp_path, s3_storage_url, s3_endpoint):
    return Settings(env="test", data_dir=tmp_path / "web", database_url=database_url, broker_url="",
                    secret_key="test-secret-key", storage_url=s3_storage_url, s3_endpoint_url=s3_endpoint)  # fmt: skip


def _add_elsewhere(settings, tmp_path, path, *extra):
    """`sage-studio weights add` in its own process with its own data and weights folders."""
    other = tmp_path / "other-machine"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGE_ENV": "test", "SAGE_SECRET_KEY": "test-secret-key",
           "SAGE_DATABASE_URL": settings.database_url, "SAGE_STORAGE_URL": settings.storage_url,
           "SAGE_S3_ENDPOINT_URL": settings.s3_endpoint_url, "SAGE_DATA_DIR": str(other),
           "SAGE_WEIGHTS_DIR": str(other / "weights")}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "weights", "add", str(path), *extra],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip


def test_a_worker_with_an_empty_weights_folder_trains_with_weights_registered_elsewhere(
    settings, tmp_path, monkeypatch
):
    torch.manual_seed(3)
    path = tmp_path / "lab.pth"
    torch.save(create_model("tiny", 2, image_size=32).net.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    done = _add_elsewhere(settings, tmp_path, path, "--name", "lab-tiny", "--backbone", "tiny")
    assert done.returncode == 0, done.stderr
    assert "stored as" in done.stdout

    folder = tmp_path / "worker-weights"  # this worker's own, empty folder (the web's is empty too)
    monkeypatch.setenv("SAGE_WEIGHTS_DIR", str(folder))
    for world in build_world(_Stack(settings), n=6):
        world.client.app.state.celery = RecordingCelery()
        listed = {w["name"]: w for w in world.get("/api/v1/weights").json()}
        assert listed["lab-tiny"]["backbone"] == "tiny" and listed["lab-tiny"]["source"] == "custom"
        url = f"/api/v1/projects/{world.project_id}/training-runs"
        refused = world.post(url, json={"training": {"weights": "not-registered"}})
        assert refused.status_code == 422 and "not-registered" in refused.json()["detail"]
        wrong = world.post(url, json={"training": {"weights": "lab-tiny", "backbone": "tiny-wide"}})
        assert wrong.status_code == 422 and "for backbone 'tiny'" in wrong.json()["detail"]
        answer = world.post(url, json={"training": {**TINY_TRAINING, "weights": "lab-tiny"}})
        assert answer.status_code == 202, answer.text
        summary = train_job.train_run(WorkerContext(settings), answer.json()["id"], RecordingCelery())
        assert summary["status"] == "succeeded", summary
    fetched = folder / f"tiny-{digest[:8]}.pth"
    assert fetched.is_file() and hashlib.sha256(fetched.read_bytes()).hexdigest() == digest
    assert not list(folder.glob(".*.part"))
    with WorkerContext(settings).session() as s:
        from app.tables import ModelVersion

        model = s.query(ModelVersion).one()
        assert model.config["weights"] == "lab-tiny"


def test_a_fetched_weights_file_is_checked_against_its_hash(settings, tmp_path):
    from app.services.weights import ensure_local
    from app.tables import WeightsFile

    torch.manual_seed(4)
    path = tmp_path / "lab.pth"
    torch.save(create_model("tiny", 2, image_size=32).net.state_dict(), path)
    assert (
        _add_elsewhere(settings, tmp_path, path, "--name", "lab-tiny", "--backbone", "tiny").returncode == 0
    )
    ctx = WorkerContext(settings)
    with ctx.session() as s:
        row = s.get(WeightsFile, "lab-tiny")
        storage = ctx.storage
        storage.client.put_object(Bucket=storage.bucket, Key=storage._name(row.storage_key), Body=b"rotten")
        with pytest.raises(WeightsError, match="do not match"):
            ensure_local(s, storage, "lab-tiny", tmp_path / "fresh")
        assert not [p for p in (tmp_path / "fresh").iterdir()], "nothing half-fetched is left"
        assert ensure_local(s, storage, "unknown", tmp_path / "fresh") is None
