"""Background jobs a user asks for and polls: model exports, batch predictions, sanity checks.

A `Job` row is created and committed by the web process, then its id is sent to a worker by task
name (inputs travel by storage key inside the row, never inside the message). The worker claims
it, reports progress on the row and finishes it with a content-addressed `result_key` in storage.

Exports are cached: one succeeded export per (model version, format) is kept and served again;
the archive's bytes never change for a model version, so the first request builds it (202 + the
job) and every later one streams it at once. A model version's artifact is immutable, so the
cache never goes stale.

Building an archive needs torch (`sage.export`), so it lives with the worker (`worker.jobs.build_export`,
also behind `sage-studio model export`); this module, which the web process imports, never does.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.queue import TASK_EXPORT_MODEL, TASK_PREDICT_BATCH, TASK_SANITY_CHECK
from app.services.errors import Conflict, Invalid, NotFound, TooManyRequests
from app.services.model_versions import SANITY_CHECK_REASON
from app.services.runs import TaskSender, create_or_join_run
from app.storage import Storage
from app.tables import Job, JobStatus, ModelVersion, Project, RunStatus, TrainingRun, User, utcnow
from sage.config import Method

EXPORT_FORMATS = ("torchscript", "onnx", "state_dict")
KINDS = ("export", "predict_batch", "sanity_check")
TASK_OF_KIND = {
    "export": TASK_EXPORT_MODEL,
    "predict_batch": TASK_PREDICT_BATCH,
    "sanity_check": TASK_SANITY_CHECK,
}
# A queued or running job whose row has not moved for this long is sent again on the next request
# (its worker died; every job body is idempotent).
STALE_AFTER = timedelta(minutes=15)


def create_job(
    session: Session, project_id: int, kind: str, params: dict[str, Any], user: User | None
) -> Job:
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job(
        project_id=project_id,
        kind=kind,
        status=JobStatus.QUEUED,
        params=params,
        progress={},
        result={},
        created_by_id=user.id if user else None,
    )
    session.add(job)
    session.flush()
    return job


QUEUE_FULL_RETRY_AFTER_S = 30


def queue_full(project_id: int, limit: int, what: str = "jobs") -> TooManyRequests:
    """The 429 for a project whose queue of background work is at its cap."""
    return TooManyRequests(
        f"project {project_id} already has {limit} {what} queued or running, the limit "
        "(SAGE_MAX_QUEUED_JOBS_PER_PROJECT); wait for some to finish, then ask again",
        headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
    )


def queued_jobs(session: Session, project_id: int) -> int:
    """Jobs of the project that are queued or running and not abandoned (touched within
    `STALE_AFTER`: a job whose worker died stops counting instead of blocking the project)."""
    return (
        session.scalar(
            select(func.count(Job.id)).where(
                Job.project_id == project_id,
                Job.status.in_(JobStatus.ACTIVE),
                Job.updated_at >= utcnow() - STALE_AFTER,
            )
        )
        or 0
    )


def check_queue_room(session: Session, project_id: int, limit: int | None) -> None:
    """Raise 429 (TooManyRequests, Retry-After) when the project has `limit` jobs queued or
    running; None means no cap."""
    if limit is not None and queued_jobs(session, project_id) >= limit:
        raise queue_full(project_id, limit)


def enqueue(celery: TaskSender, job: Job) -> None:
    """Send the job to its worker (after the commit that created it)."""
    celery.send_task(TASK_OF_KIND[job.kind], args=[job.id])


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def expire_results(
    session: Session, storage: Storage, ttl_s: float, now: datetime | None = None
) -> dict[str, Any]:
    """Retention of job results. A succeeded batch prediction whose job finished more than `ttl_s`
    seconds ago, and an export whose model version no longer exists (archives are cached while
    their model exists), is marked `expired` and loses its `result_key`; its object is then deleted
    unless a row still references the same content-addressed key (or a writer just stored it
    again). Commits; returns {"expired": job ids, "deleted": keys}. Idempotent."""
    from app.tables import as_utc

    now = now or utcnow()
    cutoff = now - timedelta(seconds=ttl_s)
    models = set(session.scalars(select(ModelVersion.id)))
    expired: list[Job] = []
    for job in session.scalars(
        select(Job).where(
            Job.status == JobStatus.SUCCEEDED,
            Job.result_key.is_not(None),
            Job.kind.in_(("export", "predict_batch")),
        )
    ):
        if job.kind == "export":
            gone = (job.params or {}).get("model_id") not in models
        else:
            finished = as_utc(job.updated_at)
            gone = finished is not None and finished <= cutoff
        if gone:
            expired.append(job)
    keys = {job.result_key for job in expired if job.result_key}
    for job in expired:
        job.status, job.result_key = JobStatus.EXPIRED, None
        job.result = {**(job.result or {}), "expired_at": now.isoformat()}
    session.commit()
    from app.services.objects import used_keys

    deleted: list[str] = []
    for key in sorted(keys):

        def in_use(key: str = key) -> bool:
            try:
                return bool(used_keys(session, [key]))
            finally:
                session.rollback()

        # kept when any row still references it, or a writer stored the same bytes meanwhile
        if storage.remove_if_unused(key, in_use):
            deleted.append(key)
    return {"expired": sorted(j.id for j in expired), "deleted": deleted}


def is_stale(job: Job) -> bool:
    from app.tables import as_utc

    updated = as_utc(job.updated_at)
    return job.status in JobStatus.ACTIVE and updated is not None and utcnow() - updated > STALE_AFTER


# --- worker side -------------------------------------------------------------------------------------


def claim(session: Session, job_id: int) -> Job | None:
    """Mark the job running; None when it is already finished (a duplicate delivery) or gone."""
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(JobStatus.ACTIVE))
        .values(status=JobStatus.RUNNING, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if done.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
        return None
    return session.get(Job, job_id)


def report_progress(session: Session, job_id: int, progress: dict[str, Any]) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(progress=progress, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def finish(
    session: Session,
    job_id: int,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    result_key: str | None = None,
    result_sha256: str | None = None,
    error: str | None = None,
) -> None:
    job = session.get(Job, job_id)
    if job is None:
        return
    job.status = status
    job.result = result or {}
    job.result_key = result_key
    job.result_sha256 = result_sha256
    job.error = error
    if status == JobStatus.SUCCEEDED:
        job.progress = {**(job.progress or {}), "done": True}
    session.commit()


# --- exports --------------------------------------------------------------------------------------


def check_format(fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise Invalid(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    return fmt


def latest_export(session: Session, model: ModelVersion, fmt: str) -> Job | None:
    """The newest export job of this model version and format (any status)."""
    jobs = session.scalars(
        select(Job).where(Job.kind == "export", Job.project_id == model.project_id).order_by(Job.id.desc())
    )
    for job in jobs:
        if job.params.get("model_id") == model.id and job.params.get("format") == fmt:
            return job
    return None


def input_still_needed(session: Session, job: Job) -> bool:
    """Whether another unfinished job reads the same stored input (storage is content-addressed,
    so two identical uploads share one object)."""
    key = (job.params or {}).get("input_key")
    others = session.scalars(
        select(Job).where(
            Job.project_id == job.project_id, Job.id != job.id, Job.status.in_(JobStatus.ACTIVE)
        )
    )
    return any((o.params or {}).get("input_key") == key for o in others)


def request_export(
    session: Session,
    model: ModelVersion,
    fmt: str,
    user: User | None,
    *,
    retry: bool = False,
    limit: int | None = None,
) -> tuple[Job, bool]:
    """The export job of (model, format): the existing one, or a new one when there is none, the
    last failed and `retry` is set, or the last is stale. Returns (job, created); the caller
    commits and enqueues a created job. A new job needs room in the project's queue (`limit`
    jobs queued or running at most; 429 otherwise)."""
    check_format(fmt)
    job = latest_export(session, model, fmt)
    if job is not None and job.status == JobStatus.FAILED and not retry:
        raise Conflict(
            f"exporting model version {model.version} as {fmt} failed: {job.error}; "
            "request it again with retry=true"
        )
    if job is not None and job.status not in (JobStatus.FAILED, JobStatus.EXPIRED) and not is_stale(job):
        return job, False
    if job is not None and job.status not in (JobStatus.FAILED, JobStatus.EXPIRED):
        # stale: the worker died; supersede it
        job.status, job.error = JobStatus.FAILED, "abandoned: no worker finished it"
    check_queue_room(session, model.project_id, limit)
    return create_job(session, model.project_id, "export", {"model_id": model.id, "format": fmt}, user), True


def lineage_summary(session: Session, model: ModelVersion) -> dict[str, Any]:
    """What model.json says about where the model came from."""
    run = session.get(TrainingRun, model.run_id) if model.run_id else None
    project = session.get(Project, model.project_id)
    lineage = (run.lineage if run else None) or {}
    annotations = lineage.get("annotations")
    return {
        "project_id": model.project_id,
        "project": project.name if project else None,
        "model_id": model.id,
        "model_version": model.version,
        "model_checksum": model.checksum,
        "run_id": model.run_id,
        "created_at": model.created_at.isoformat() if model.created_at else None,
        "snapshot_at": lineage.get("snapshot_at"),
        "annotations": len(annotations) if isinstance(annotations, list | dict) else annotations,
        "images": lineage.get("images"),
        "with_saliency": lineage.get("with_saliency"),
        "label_counts": lineage.get("labels"),
    }


def export_filename(model: ModelVersion, fmt: str) -> str:
    return f"project-{model.project_id}-model-v{model.version}-{fmt}.zip"


# --- the inverted-saliency sanity check ----------------------------------------------------------

# A sanity check job follows its run; a failed, cancelled or deleted run fails it.
JOB_STATUS_OF_RUN: dict[str, JobStatus] = {
    RunStatus.QUEUED: JobStatus.QUEUED,
    RunStatus.RUNNING: JobStatus.RUNNING,
    RunStatus.SUCCEEDED: JobStatus.SUCCEEDED,
}

# The reading says "the maps matter" when training on inverted maps costs at least this much
# accuracy (the benchmark's own bar: sage-inverted within 5 points of ce fails it, bench/ml.md).
SANITY_MARGIN = 0.05


def start_sanity_check(session: Session, model: ModelVersion, user: User | None) -> tuple[Job, int]:
    """Train the model's configuration again with its saliency maps inverted (S -> 1 - S, method
    sage-inverted) on the project's current data; the resulting version is never activated.
    Returns (the job, the run id to enqueue); commits."""
    method = (model.config or {}).get("method")
    if method != Method.SAGE:
        raise Invalid(
            f"the sanity check trains SAGE with inverted maps; model version {model.version} was trained "
            f"with {method!r}, which has no inverted variant"
        )
    project = session.get_one(Project, model.project_id)
    # the options the model's run was given (the full config also holds values only the worker
    # sets, such as resolved paths), with the maps inverted
    run = session.get(TrainingRun, model.run_id) if model.run_id else None
    given = (
        dict(run.options or {})
        if run is not None
        else {k: v for k, v in (model.config or {}).items() if v is not None}
    )
    options = {**given, "method": Method.SAGE_INVERTED}
    request = create_or_join_run(session, project, user, options, reason=SANITY_CHECK_REASON)
    assert request is not None  # force=True (the default) always starts or joins a run
    if not request.created:
        raise Conflict(
            f"training run {request.run.id} is {request.run.status}; start the sanity check when it has finished"
        )
    job = create_job(
        session, project.id, "sanity_check", {"model_id": model.id, "run_id": request.run.id}, user
    )
    session.commit()
    return job, request.run.id


def latest_sanity_check(session: Session, model_id: int, project_id: int) -> Job | None:
    for job in session.scalars(
        select(Job).where(Job.project_id == project_id, Job.kind == "sanity_check").order_by(Job.id.desc())
    ):
        if job.params.get("model_id") == model_id:
            return job
    return None


def _score(metrics: dict[str, Any]) -> tuple[str, float | None]:
    for key in ("test_accuracy", "val_accuracy"):
        if metrics.get(key) is not None:
            return key, float(metrics[key])
    return "val_accuracy", None


def sanity_reading(original: dict[str, Any], inverted: dict[str, Any]) -> dict[str, Any]:
    """Compare the model with its inverted-maps twin on the same metric (test accuracy when both
    have it, else validation accuracy): {metric, original, inverted, drop, maps_matter, reading}."""
    key, a = _score(original)
    key_b, b = _score(inverted)
    if key != key_b:
        key, a, b = "val_accuracy", original.get("val_accuracy"), inverted.get("val_accuracy")
    if a is None or b is None:
        return {"metric": key, "original": a, "inverted": b, "drop": None, "maps_matter": None,
                "reading": "not comparable: a metric is missing"}  # fmt: skip
    drop = a - b
    name = key.replace("_", " ")
    auc_a, auc_b = metrics_summary(original)["auroc"], metrics_summary(inverted)["auroc"]
    auc_drop = auc_a - auc_b if auc_a is not None and auc_b is not None else None
    if drop >= SANITY_MARGIN:
        matter, reading = True, f"The maps matter: with inverted maps {name} falls from {a:.1%} to {b:.1%}."
    elif auc_drop is not None and auc_drop >= SANITY_MARGIN:  # same accuracy, worse ranking
        matter = True
        reading = (
            f"The maps matter: with inverted maps AUROC falls from {auc_a:.3f} to {auc_b:.3f} "
            f"({name} {b:.1%} against {a:.1%})."
        )
    else:
        matter = False
        reading = (
            f"They do not: with inverted maps {name} is {b:.1%} against {a:.1%}; the model may not "
            "rely on the annotated regions."
        )
    return {"metric": key, "original": a, "inverted": b, "drop": drop, "auroc_drop": auc_drop,
            "maps_matter": matter, "reading": reading}  # fmt: skip


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers shown side by side: accuracies, validation loss, AUROC, EER, alignment."""
    roc = metrics.get("roc") or {}
    pad = metrics.get("pad") or {}
    split = "test" if "test" in roc else "val"
    return {
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "val_loss": metrics.get("val_loss"),
        "auroc": (roc.get(split) or {}).get("auroc"),
        "eer": ((pad.get("test") or pad.get("val") or {}).get("eer") or {}).get("eer"),
        "alignment": ((metrics.get("val") or {}).get("alignment") or {}).get("soft_iou"),
    }


def sanity_report(session: Session, model: ModelVersion) -> dict[str, Any] | None:
    """The latest sanity check of a model: the run's status, the inverted version and the reading."""
    job = latest_sanity_check(session, model.id, model.project_id)
    if job is None:
        return None
    run = session.get(TrainingRun, job.params.get("run_id"))
    status = run.status if run else RunStatus.FAILED
    out: dict[str, Any] = {
        "job_id": job.id,
        "model_id": model.id,
        "run_id": job.params.get("run_id"),
        "status": status,
        "progress": (run.progress if run else {}) or {},
        "error": run.error if run else "the run was deleted",
        "inverted_model_id": None,
        "original": metrics_summary(model.metrics or {}),
        "inverted": {},
        "comparison": None,
    }
    if run is not None and run.model_id:
        twin = session.get(ModelVersion, run.model_id)
        if twin is not None:
            out["inverted_model_id"] = twin.id
            out["inverted"] = metrics_summary(twin.metrics or {})
            out["comparison"] = sanity_reading(model.metrics or {}, twin.metrics or {})
    job_status = JOB_STATUS_OF_RUN.get(status, JobStatus.FAILED)
    if job.status != job_status:
        job.status = job_status
        session.commit()
    return out
