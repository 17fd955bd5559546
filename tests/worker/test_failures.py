"""Failure handling with real processes: a training worker SIGKILLed mid-run, the stale run reaped
and re-queued by beat, claimed again by a fresh worker, then cancelled within seconds. The active
model never changes and no partial artifact is left."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import func, select

from app.tables import ModelVersion, TrainingEvent, TrainingRun
from tests.worker.conftest import wait_for, wait_run

pytestmark = pytest.mark.slow


def _make_active_model(world) -> int:
    with world.session() as s:
        model = ModelVersion(
            project_id=world.project_id,
            version=1,
            artifact_key=f"models/project-{world.project_id}/run-0-previous",
            checksum="0" * 64,
            backbone="tiny",
            labels=["left", "right"],
            metrics={"val_accuracy": 0.0},
            active=True,
        )
        s.add(model)
        s.commit()
        return model.id


def _model_objects(stack) -> list[str]:
    """Model weights in the object storage (the fake active model above has none)."""
    from app.storage import get_storage

    return [k for k in get_storage(stack.settings).iter_keys() if k.endswith(".pt")]


def _training_steps(world, run_id: int) -> int:
    with world.session() as s:
        return s.scalar(
            select(func.count())
            .select_from(TrainingEvent)
            .where(
                TrainingEvent.run_id == run_id,
                TrainingEvent.kind.in_(("progress", "epoch")),
                TrainingEvent.data["epoch"].as_integer() >= 1,
            )
        )


def test_killed_worker_run_is_reaped_requeued_and_cancelled(world):
    stack = world.stack
    active_id = _make_active_model(world)
    stack.beat()
    stack.worker("predict")  # consumes beat's reaper jobs
    trainer = stack.worker("train")

    run = world.post(
        f"/api/v1/projects/{world.project_id}/training-runs",
        json={"training": {"epochs": 2000, "progress_every": 1}},
    ).json()
    wait_for(lambda: _training_steps(world, run["id"]) >= 2, 60, "training steps")

    stack.kill(trainer, signal.SIGKILL)  # the worker and its pool process, mid-epoch
    body = world.get(f"/api/v1/training-runs/{run['id']}").json()
    assert body["status"] == "running" and body["attempts"] == 1  # nobody could say otherwise yet

    # Beat's reaper sees the heartbeat go stale (3 s here) and re-queues the run (attempts left).
    requeued = wait_run(world, run["id"], ("queued",), timeout=30)
    assert requeued["attempts"] == 1 and requeued["progress"].get("requeued") is True
    with world.session() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1
        assert s.get(ModelVersion, active_id).active is True
    assert _model_objects(stack) == [], "no partial artifact"

    # A fresh worker claims it again (the reaper re-sent the job) ...
    stack.worker("train")
    running = wait_run(world, run["id"], ("running",), timeout=60)
    assert running["attempts"] == 2
    wait_for(lambda: _training_steps(world, run["id"]) >= 4, 60, "training steps of the second attempt")

    # ... and cancel stops it within seconds.
    asked = time.monotonic()
    response = world.post(f"/api/v1/training-runs/{run['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    cancelled = wait_run(world, run["id"], ("cancelled",), timeout=15)
    assert time.monotonic() - asked < 10
    assert cancelled["model_id"] is None
    assert world.post(f"/api/v1/training-runs/{run['id']}/cancel").status_code == 409

    with world.session() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1
        assert s.get(ModelVersion, active_id).active is True
        assert s.get(TrainingRun, run["id"]).worker_id is not None
    assert _model_objects(stack) == [], "no artifact from a cancelled run"
    # The run's work folders (its data snapshots) are gone: the live one removed by the run, the
    # dead worker's by the reaper.
    wait_for(
        lambda: not list((stack.settings.resolved_data_dir / "runs").rglob("labels.csv")),
        10,
        "work folders removed",
    )
