"""The Celery tasks, registered by name (the names in app.queue are the contract with the web app).

Task bodies live in worker.train_job, worker.prediction and worker.scheduler; each task here only
finds its process's `WorkerContext` and calls one of them.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.queue import (
    TASK_EXPIRE_RESULTS,
    TASK_EXPORT_MODEL,
    TASK_PREDICT,
    TASK_PREDICT_BATCH,
    TASK_PREDICT_MISSING,
    TASK_PREDICT_PROJECT,
    TASK_REALIGN,
    TASK_REAP_STALE,
    TASK_RETRAIN_CHECK,
    TASK_SWEEP_OBJECTS,
    TASK_TRAIN,
)
from worker import jobs, prediction, scheduler, train_job
from worker.context import WorkerContext, get_context


def _ctx(task) -> WorkerContext:
    return get_context(task.app.sage_settings)


def register_tasks(celery: Celery) -> None:
    # Training: acknowledged only when done, re-queued if the process dies; the run row's claim
    # makes any second delivery a no-op.
    @celery.task(name=TASK_TRAIN, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def train_run(self, run_id: int) -> dict[str, Any]:
        return train_job.train_run(_ctx(self), int(run_id), self.app)

    # Project predictions are an idempotent upsert per (image, model): safe to redeliver.
    @celery.task(
        name=TASK_PREDICT_PROJECT, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )
    def predict_project(self, model_id: int, after_image_id: int = 0) -> dict[str, Any]:
        return prediction.predict_project(_ctx(self), int(model_id), int(after_image_id), self.app)

    # New images of projects with an active model, and stale alignments: idempotent upserts.
    @celery.task(
        name=TASK_PREDICT_MISSING, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )
    def predict_missing(self, project_id: int | None = None) -> dict[str, Any]:
        return prediction.predict_missing(_ctx(self), None if project_id is None else int(project_id))

    @celery.task(name=TASK_REALIGN, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def realign(self, image_id: int) -> dict[str, Any]:
        return prediction.realign_image(_ctx(self), int(image_id))

    # A request/response prediction: at most once (the caller has a timeout and can retry).
    @celery.task(name=TASK_PREDICT, bind=True, acks_late=False)
    def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        return prediction.predict_image(_ctx(self), request)

    # Jobs (app.services.jobs): each body claims its row, so a redelivery is harmless.
    @celery.task(
        name=TASK_EXPORT_MODEL, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )
    def export_model(self, job_id: int) -> dict[str, Any]:
        return jobs.export_model(_ctx(self), int(job_id))

    @celery.task(
        name=TASK_PREDICT_BATCH, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )
    def predict_batch(self, job_id: int) -> dict[str, Any]:
        return jobs.predict_batch(_ctx(self), int(job_id))

    @celery.task(name=TASK_REAP_STALE, bind=True, ignore_result=True)
    def reap_stale_runs(self) -> dict[str, Any]:
        return scheduler.reap(_ctx(self), self.app)

    @celery.task(name=TASK_EXPIRE_RESULTS, bind=True, ignore_result=True)
    def expire_job_results(self) -> dict[str, Any]:
        return scheduler.expire_results(_ctx(self))

    @celery.task(name=TASK_RETRAIN_CHECK, bind=True, ignore_result=True)
    def retrain_check(self) -> dict[str, Any]:
        return scheduler.retrain(_ctx(self), self.app)

    @celery.task(name=TASK_SWEEP_OBJECTS, bind=True, ignore_result=True)
    def sweep_objects(self) -> dict[str, Any]:
        return scheduler.sweep(_ctx(self))
