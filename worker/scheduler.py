"""Beat's schedule and its periodic jobs: reap runs whose heartbeat went stale, start retraining,
sweep stored objects no row uses, expire old job results.

Both jobs are idempotent (conditional updates, at most one queued or running run per project), so
two beat processes by mistake, or a job delivered twice, do no harm. They expire after one period
so a backlog never builds up while no worker consumes.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from sqlalchemy import select

from app.queue import (
    PREDICT_QUEUE,
    TASK_EXPIRE_RESULTS,
    TASK_PREDICT_MISSING,
    TASK_REAP_STALE,
    TASK_RETRAIN_CHECK,
    TASK_SWEEP_OBJECTS,
    TRAIN_QUEUE,
)
from app.services import jobs as job_service
from app.services import objects, runs
from app.settings import Settings
from app.tables import ModelVersion, RunStatus
from worker import registry
from worker.context import WorkerContext

log = logging.getLogger(__name__)

# Artifacts and run work folders no row points to are removed once they are this old: far longer
# than the milliseconds between an artifact's rename and its row's commit.
ORPHAN_AGE_S = 3600.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "reap-stale-runs": {
            "task": TASK_REAP_STALE,
            "schedule": settings.reap_interval_s,
            "options": {"queue": PREDICT_QUEUE, "expires": settings.reap_interval_s},
        },
        "retrain-check": {
            "task": TASK_RETRAIN_CHECK,
            "schedule": settings.retrain_check_interval_s,
            "options": {"queue": PREDICT_QUEUE, "expires": settings.retrain_check_interval_s},
        },
        "sweep-objects": {
            "task": TASK_SWEEP_OBJECTS,
            "schedule": settings.orphan_sweep_interval_s,
            "options": {"queue": PREDICT_QUEUE, "expires": settings.orphan_sweep_interval_s},
        },
        "fresh-predictions": {
            "task": TASK_PREDICT_MISSING,
            "schedule": settings.fresh_predictions_interval_s,
            "options": {"queue": TRAIN_QUEUE, "expires": settings.fresh_predictions_interval_s},
        },
        "expire-job-results": {
            "task": TASK_EXPIRE_RESULTS,
            "schedule": settings.job_result_sweep_interval_s,
            "options": {"queue": PREDICT_QUEUE, "expires": settings.job_result_sweep_interval_s},
        },
    }


def sweep(ctx: WorkerContext) -> dict[str, Any]:
    """Remove stored objects no row uses that are older than the grace period (or count them)."""
    settings = ctx.settings
    with ctx.session() as session:
        report = objects.sweep_orphans(
            session, ctx.storage, settings.orphan_grace_s, dry_run=settings.orphan_sweep_dry_run
        )
    objects.write_report(settings.resolved_data_dir, report)
    if report.orphans:
        log.warning("orphan sweep: %s", report)
    return {"orphans": report.orphans, "removed": report.removed, "kept": report.kept}


def reap(ctx: WorkerContext, celery: runs.TaskSender) -> dict[str, Any]:
    """Re-queue or fail runs with a stale heartbeat; remove what dead workers left on disk."""
    data_dir = ctx.settings.resolved_data_dir
    with ctx.session() as session:
        before = {
            run.id: run.worker_id
            for run in session.scalars(
                select(runs.TrainingRun).where(runs.TrainingRun.status == RunStatus.RUNNING)
            )
        }
        session.rollback()
        report = runs.reap_stale_runs(session, ctx.settings, celery)
        known = set(session.scalars(select(ModelVersion.artifact_key)))
    for run_id in report.requeued + report.failed:
        worker_id = before.get(run_id)
        if worker_id:
            shutil.rmtree(
                data_dir / "runs" / f"run-{run_id}" / worker_id.replace(":", "-"), ignore_errors=True
            )
    swept = registry.sweep_legacy_artifacts(data_dir, known, ORPHAN_AGE_S)
    if swept:
        log.warning("removed orphaned model artifacts: %s", swept)
    return {"requeued": report.requeued, "failed": report.failed, "resent": report.resent, "swept": swept}


def retrain(ctx: WorkerContext, celery: runs.TaskSender) -> dict[str, Any]:
    with ctx.session() as session:
        started = runs.retrain_check(session, celery)
    if started:
        log.info("periodic retraining started runs %s", started)
    return {"started": started}


def expire_results(ctx: WorkerContext) -> dict[str, Any]:
    """Expire job results past SAGE_JOB_RESULT_TTL_S and delete their objects (see
    app.services.jobs.expire_results)."""
    with ctx.session() as session:
        report = job_service.expire_results(session, ctx.storage, ctx.settings.job_result_ttl_s)
    if report["expired"]:
        log.info(
            "expired job results: jobs %s, %d objects deleted", report["expired"], len(report["deleted"])
        )
    return report
