"""Periodic retraining with real processes: beat's retrain check finds a project with enough new
annotations, queues a `scheduled` run, a training worker trains it, and once the run has
snapshotted the data nothing more is due until annotations change again."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app.tables import ModelVersion, Project, TrainingRun
from tests.worker.conftest import wait_for, wait_run

pytestmark = pytest.mark.slow


def _runs(world) -> list[TrainingRun]:
    with world.session() as s:
        return list(s.scalars(select(TrainingRun).where(TrainingRun.project_id == world.project_id)))


def test_beat_queues_a_scheduled_retrain_that_a_worker_trains(world):
    stack = world.stack
    stack.settings.retrain_check_interval_s = 1.0  # passed to beat through its environment
    with world.session() as s:
        project = s.get(Project, world.project_id)
        project.retrain_enabled, project.retrain_min_new = True, len(world.image_ids)  # 24 annotations: due
        s.commit()
    stack.beat()
    stack.worker("predict")  # runs beat's retrain checks
    stack.worker("train")

    run = wait_for(lambda: next(iter(_runs(world)), None), 60, "beat to queue a run")
    assert run.reason == "scheduled"
    done = wait_run(world, run.id, ("succeeded", "failed"), timeout=180)
    assert done["status"] == "succeeded", done.get("error")
    with world.session() as s:
        model = s.scalar(select(ModelVersion).where(ModelVersion.run_id == run.id))
        assert model is not None and model.active  # the first model is activated (policy auto)

    time.sleep(4)  # several more checks: nothing changed since the run's snapshot
    assert [r.id for r in _runs(world)] == [run.id]
