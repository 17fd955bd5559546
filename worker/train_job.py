"""The training job: claim the run, heartbeat, snapshot the data, fit, publish, activate, predict.

Runs in a training worker's pool process, which is recycled after every run (a fresh process per
run: no CUDA state, leaked memory or stray threads carry over). The run row is the source of truth:
whoever claims it owns it, and every later write is conditional on still owning it, so a run the
reaper handed to another worker can never be finished twice or publish a model.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.services import model_versions as model_service
from app.services import runs
from app.tables import Project, RunStatus, TrainingRun
from worker import registry
from worker.context import WorkerContext

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Refreshes the run's heartbeat and watches its cancel flag from a thread of its own, so the
    training loop only reads two events (`should_cancel` is called on every step)."""

    def __init__(self, ctx: WorkerContext, run_id: int, worker_id: str) -> None:
        super().__init__(name=f"heartbeat-run-{run_id}", daemon=True)
        self.ctx = ctx
        self.run_id = run_id
        self.worker_id = worker_id
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop_event = threading.Event()
        settings = ctx.settings
        self.beat_every = settings.heartbeat_interval_s
        self.poll_every = min(settings.cancel_poll_interval_s, settings.heartbeat_interval_s)

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop_event.wait(self.poll_every):
            beat = time.monotonic() - last_beat >= self.beat_every
            try:
                with self.ctx.session() as session:
                    owned, cancel = runs.heartbeat(session, self.run_id, self.worker_id, beat=beat)
            except Exception:  # a database blip: try again next tick
                log.exception("heartbeat of run %s failed", self.run_id)
                continue
            if beat:
                last_beat = time.monotonic()
            if not owned:
                log.warning("run %s is no longer owned by %s: stopping", self.run_id, self.worker_id)
                self.lost.set()
                return
            if cancel:
                self.cancel.set()


def _jsonable(value: Any) -> Any:
    """Progress events come from numpy/torch code: make them plain JSON (NaN/inf become None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


class ProgressRecorder:
    """The `progress` callback of `sage.training.fit`: stores each event on the run and in its
    event stream. Step events are throttled to `min_interval_s`; epoch ends always go through."""

    def __init__(
        self,
        ctx: WorkerContext,
        run_id: int,
        worker_id: str,
        heartbeat: Heartbeat,
        min_interval_s: float = 0.5,
    ) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.worker_id = worker_id
        self.heartbeat = heartbeat
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        epoch_end = event.get("val") is not None
        now = time.monotonic()
        if not epoch_end and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.record({"phase": "training", **_jsonable(event)}, kind="epoch" if epoch_end else "progress")

    def record(self, progress: dict[str, Any], kind: str = "progress") -> None:
        try:
            with self.ctx.session() as session:
                owned = runs.record_progress(session, self.run_id, self.worker_id, progress, kind=kind)
        except Exception:  # progress is best effort; the heartbeat decides ownership
            log.exception("could not record progress of run %s", self.run_id)
            return
        if not owned:
            self.heartbeat.lost.set()


def build_config(options: dict[str, Any]):
    from sage.config import TrainConfig

    return TrainConfig.from_dict(options)


def train_run(ctx: WorkerContext, run_id: int, celery: runs.TaskSender) -> dict[str, Any]:
    """The body of the `sage.train_run` task. Returns a small summary (also for duplicate deliveries)."""
    worker_id = f"{ctx.worker_id}:{uuid.uuid4().hex[:6]}"
    with ctx.session() as session:
        if not runs.claim_run(session, run_id, worker_id):
            run = session.get(TrainingRun, run_id)
            status = run.status if run else "missing"
            log.info(
                "run %s not claimed (status %s): duplicate or stale delivery, nothing to do", run_id, status
            )
            return {"run_id": run_id, "claimed": False, "status": status}

    heartbeat = Heartbeat(ctx, run_id, worker_id)
    heartbeat.start()
    recorder = ProgressRecorder(ctx, run_id, worker_id, heartbeat)
    work_dir = ctx.settings.resolved_data_dir / "runs" / f"run-{run_id}" / worker_id.replace(":", "-")
    try:
        return _train_claimed(ctx, run_id, worker_id, heartbeat, recorder, work_dir, celery)
    finally:
        heartbeat.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def _incumbent_on_same_val(ctx: WorkerContext, project_id: int, data_dir: Path) -> dict[str, Any] | None:
    """The active model's validation accuracy and loss on this run's validation images, so that
    activation compares the two models on the same images; None when there is no active model or
    it cannot be evaluated on them (other labels, missing artifact)."""
    from sage.data import load_split, read_dataset
    from sage.evaluation import evaluate
    from sage.inference import Predictor

    with ctx.session() as session:
        active = model_service.active_model(session, project_id)
        if active is None:
            return None
        model_id, key, checksum = active.id, active.artifact_key, active.checksum
    try:
        predictor = Predictor.load(
            registry.verified_model_file(ctx.storage, ctx.settings.resolved_data_dir, key, checksum)
        )
        index = read_dataset(data_dir, predictor.labels)
        samples = index.split("val")
        if not samples:
            return None
        val = load_split(index, samples, predictor.image_size)
        report = evaluate(predictor.model, val, predictor.labels, predictor.device, alignment=False)
    except Exception as exc:  # noqa: BLE001 - fall back to comparing the stored metrics
        log.warning(
            "active model %s could not be evaluated on this run's validation images: %s", model_id, exc
        )
        return None
    return {
        "model_id": model_id,
        "val_accuracy": report["accuracy"],
        "val_loss": report["loss"],
        "n": report["n"],
    }


def _finish(
    ctx: WorkerContext, run_id: int, worker_id: str, status: RunStatus, **kwargs: Any
) -> dict[str, Any]:
    with ctx.session() as session:
        owned = runs.finish_run(session, run_id, worker_id, status, **kwargs)
    if not owned:
        log.warning("run %s was taken from this worker before it finished; result discarded", run_id)
        return {"run_id": run_id, "claimed": True, "status": "lost"}
    return {
        "run_id": run_id,
        "claimed": True,
        "status": status,
        **({"error": kwargs["error"]} if kwargs.get("error") else {}),
    }


def _train_claimed(
    ctx: WorkerContext,
    run_id: int,
    worker_id: str,
    heartbeat: Heartbeat,
    recorder: ProgressRecorder,
    work_dir: Path,
    celery: runs.TaskSender,
) -> dict[str, Any]:
    from app.services.datasets import draw_splits, write_dataset_folder
    from sage.training import Cancelled, fit

    data_dir = work_dir / "data"
    out_dir = work_dir / "out"
    try:
        recorder.record({"phase": "snapshot"})
        with ctx.session() as session:  # splits are drawn once per image and kept for every later run
            draw_splits(session, session.get(Project, session.get(TrainingRun, run_id).project_id))
            session.commit()
        with ctx.session() as session:
            run = session.get(TrainingRun, run_id)
            project = session.get(Project, run.project_id)
            project_id = project.id
            options = dict(run.options or runs.resolve_options(project, None))
            snapshot_at = datetime.now(UTC)
            lineage = write_dataset_folder(
                session, ctx.storage, project, data_dir, only_labelled=True, arrays=True
            )
            session.rollback()
        lineage = {**_jsonable(lineage), "snapshot_at": snapshot_at.isoformat()}
        with ctx.session() as session:
            runs.record_lineage(session, run_id, worker_id, lineage)
        config = build_config(options)
        if config.weights:  # registered on another machine: fetch it into this worker's folder
            from app.services.weights import ensure_local
            from sage.weights import weights_dir

            with ctx.session() as session:
                ensure_local(session, ctx.storage, config.weights, weights_dir())
        if heartbeat.should_stop():
            raise Cancelled("cancelled before training started")
        recorder.record(
            {"phase": "training", "epoch": 0, "epochs": config.epochs, "step": 0, "config": config.to_dict()}
        )
        ranks = ctx.settings.train_processes
        if ranks > 1:  # a multi-GPU worker (--gpus 0,1): DistributedDataParallel, one rank per GPU
            from sage.distributed import fit_distributed

            metrics = fit_distributed(
                config,
                data_dir,
                out_dir,
                world_size=ranks,
                progress=recorder,
                should_cancel=heartbeat.should_stop,
                started=lambda pids: log.info("run %s: %s ranks started, pids %s", run_id, ranks, pids),
            )
        else:
            metrics = fit(config, data_dir, out_dir, progress=recorder, should_cancel=heartbeat.should_stop)
    except Cancelled:
        if heartbeat.lost.is_set():
            return {"run_id": run_id, "claimed": True, "status": "lost"}
        return _finish(ctx, run_id, worker_id, RunStatus.CANCELLED)
    except Exception as exc:  # any failure fails the run, with the reason shown in the API
        log.exception("run %s failed", run_id)
        return _finish(ctx, run_id, worker_id, RunStatus.FAILED, error=f"{exc.__class__.__name__}: {exc}")

    if heartbeat.should_stop():  # cancelled or reaped between the last step and here
        if heartbeat.lost.is_set():
            return {"run_id": run_id, "claimed": True, "status": "lost"}
        return _finish(ctx, run_id, worker_id, RunStatus.CANCELLED)

    metrics = _jsonable(metrics)
    incumbent = _incumbent_on_same_val(ctx, project_id, data_dir)
    if incumbent is not None:
        metrics["compared_with"] = incumbent
    config_dict = config.to_dict()
    try:
        artifact = registry.publish_artifact(
            ctx.storage,
            project_id,
            run_id,
            out_dir / registry.MODEL_FILE,
            config_dict,
            metrics,
        )
    except Exception as exc:
        log.exception("run %s: publishing the artifact failed", run_id)
        return _finish(ctx, run_id, worker_id, RunStatus.FAILED, error=f"could not store the model: {exc}")
    try:
        with ctx.session() as session:
            registered = model_service.register_model(
                session,
                run_id,
                worker_id,
                artifact_key=artifact.key,
                checksum=artifact.checksum,
                config=config_dict,
                metrics=metrics,
                incumbent_on_val=incumbent,
            )
    except Exception as exc:
        registry.remove_artifact(ctx.storage, ctx.settings.resolved_data_dir, artifact)
        log.exception("run %s: registering the model failed", run_id)
        return _finish(ctx, run_id, worker_id, RunStatus.FAILED, error=f"could not register the model: {exc}")
    if registered is None:
        registry.remove_artifact(ctx.storage, ctx.settings.resolved_data_dir, artifact)
        return {"run_id": run_id, "claimed": True, "status": "lost"}
    model, activated = registered
    if activated:
        model_service.enqueue_project_predictions(celery, model.id)
    return {
        "run_id": run_id,
        "claimed": True,
        "status": RunStatus.SUCCEEDED,
        "model_id": model.id,
        "version": model.version,
        "activated": activated,
        "val_accuracy": metrics.get("val_accuracy"),
    }
