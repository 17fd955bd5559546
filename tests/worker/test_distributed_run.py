"""A training worker with SAGE_TRAIN_PROCESSES=2 (what `worker --gpus 0,1` sets) trains a run with
DistributedDataParallel (gloo on CPU here); when one rank dies mid-run the run fails with the reason,
the active model stays active and no model object is stored."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from app.services import runs
from app.storage import get_storage
from app.tables import ModelVersion, Project, TrainingRun
from tests.worker.conftest import build_world, wait_for
from worker.context import WorkerContext
from worker.train_job import train_run

pytestmark = pytest.mark.slow


class Sent:
    def __init__(self) -> None:
        self.tasks: list[tuple[str, object]] = []

    def send_task(self, name, args=None, kwargs=None, **options):
        self.tasks.append((name, args))


def _ranks() -> list[int]:
    """Rank processes started by this process (`python -m sage.distributed`)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"sage.distributed" in cmdline:
            found.append(int(proc.name))
    return sorted(found)


@pytest.fixture
def world(embedded_stack):
    yield from build_world(embedded_stack, training={"method": "sage", "backbone": "tiny", "image_size": 32,
                                                     "epochs": 2, "batch_size": 8, "device": "cpu"})  # fmt: skip


def _new_run(world, **options) -> int:
    with world.session() as s:
        run = runs.create_or_join_run(s, s.get(Project, world.project_id), None, options).run
        return run.id


def test_two_rank_run_succeeds_then_a_dying_rank_fails_the_next_cleanly(world):
    ctx = WorkerContext(world.stack.settings.model_copy(update={"train_processes": 2}))
    sent = Sent()
    first = _new_run(world)
    result = train_run(ctx, first, sent)
    assert result["status"] == "succeeded" and result["activated"] is True, result
    with world.session() as s:
        run = s.get(TrainingRun, first)
        active = s.get(ModelVersion, result["model_id"])
        assert active.active and active.metrics["world_size"] == 2
        assert run.metrics["epochs_run"] == 2 and run.metrics["world_size"] == 2
    storage = get_storage(world.stack.settings)
    assert sorted(k for k in storage.iter_keys() if k.endswith(".pt")) == [f"{active.checksum}.pt"]

    second = _new_run(world, epochs=500, progress_every=1)
    killed: list[int] = []

    def kill_a_rank():
        def training_started():
            with world.session() as s:
                progress = s.get(TrainingRun, second).progress or {}
                return progress.get("phase") == "training" and progress.get("step", 0) >= 1

        wait_for(lambda: len(_ranks()) == 2 and training_started(), 120, "both ranks training", interval=0.2)
        pid = _ranks()[1]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_a_rank)
    killer.start()
    result = train_run(ctx, second, sent)
    killer.join()
    assert killed and result["status"] == "failed", result
    assert "RankFailed" in result["error"] and "was killed by SIGKILL" in result["error"]
    assert _ranks() == [], "no rank outlives the run"
    with world.session() as s:
        run = s.get(TrainingRun, second)
        assert run.status == "failed" and run.model_id is None
        assert s.get(ModelVersion, active.id).active is True
        assert s.query(ModelVersion).count() == 1
    assert sorted(k for k in storage.iter_keys() if k.endswith(".pt")) == [f"{active.checksum}.pt"]
    assert not list((world.stack.settings.resolved_data_dir / "runs").rglob("labels.csv"))
