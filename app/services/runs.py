"""Training runs: create or join, cancel, claim, heartbeat, progress, finish, reap, retrain-due.

The database is the source of truth for a run (DESIGN.md section 5). Every state change is a
conditional UPDATE on the run row, so two workers, a redelivered broker message, the reaper and a
cancel request can race without ever producing two owners of one run:

    queued --claim--> running --finish--> succeeded | failed | cancelled
       ^                 |
       +----reap (stale heartbeat, attempts < max)----+   (else: failed)

Jobs are sent to the broker only after the transaction that created or re-queued the run has
committed; a lost message is harmless because the reaper re-sends queued runs that nobody claimed.
Called by the API routes, the worker and beat alike; they pass the Celery client explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app.queue import TASK_TRAIN
from app.services.errors import Conflict, Invalid
from app.services.lookups import active_model
from app.settings import Settings
from app.tables import (
    Annotation,
    Image,
    Project,
    ReadingStatus,
    RunStatus,
    TrainingEvent,
    TrainingRun,
    User,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)


class TaskSender(Protocol):
    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any: ...


class TrainingError(Conflict):
    """A training request that conflicts with the project's state (409); `detail` says what to do."""


class InvalidTrainingOptions(Invalid):
    """Training options TrainConfig rejects (422), named in `detail`."""


# The re-send wait of a queued run doubles up to 2**6 stale periods (about an hour at the default 60 s).
MAX_RESEND_DOUBLINGS = 6


# --- options -----------------------------------------------------------------------------------


def project_defaults(project: Project) -> dict[str, Any]:
    """The TrainConfig a project trains with when a run overrides nothing."""
    base: dict[str, Any] = {
        "backbone": project.backbone,
        "image_size": project.image_size,
        "labels": list(project.labels or []),
    }
    base.update(project.training or {})
    return base


def check_bounds(config: Any, settings: Settings | None) -> None:
    """Upper bounds on the knobs that size a run (epochs, image size, batch size): a request
    cannot queue a run that would hold a training worker for days or exhaust its memory."""
    limits = settings or Settings()
    for name, bound in (
        ("epochs", limits.max_train_epochs),
        ("image_size", limits.max_train_image_size),
        ("batch_size", limits.max_train_batch_size),
    ):
        value = getattr(config, name)
        if value > bound:
            raise InvalidTrainingOptions(
                f"invalid training options: {name} is {value}, over this server's limit of {bound}"
            )


def check_project_training(fields: dict[str, Any], settings: Settings | None = None) -> None:
    """Validate a project's stored training defaults as a run would use them (422 naming an
    unknown key or a bad value), so a project can never hold options no run can train with."""
    merged = {
        "backbone": fields.get("backbone", "tiny"),
        "image_size": fields.get("image_size", 64),
        **(fields.get("training") or {}),
    }
    from sage.config import TrainConfig

    try:
        config = TrainConfig.from_dict(merged)
    except (ValueError, TypeError) as exc:
        raise InvalidTrainingOptions(f"invalid training options: {exc}") from exc
    check_bounds(config, settings)


def resolve_options(
    project: Project,
    options: dict[str, Any] | None,
    settings: Settings | None = None,
    session: Session | None = None,
) -> dict[str, Any]:
    """Project defaults overridden by a run's options, validated by `sage.config.TrainConfig`.

    Raises InvalidTrainingOptions (422) naming the bad key, before anything is stored or queued.
    Returns the merged options as given, not every default expanded: the worker builds the full
    config with its own sage version (and records it on the model version), so a run queued before
    a deploy that adds an option still trains after it.
    """
    if options is not None and not isinstance(options, dict):
        raise InvalidTrainingOptions(f"training options must be a JSON object, got {type(options).__name__}")
    merged = {**project_defaults(project), **(options or {})}
    check_web_options(merged)
    # Late import keeps `sage` out of processes that never train (sage.config itself is torch-free).
    from sage.config import TrainConfig

    try:
        config = TrainConfig.from_dict(merged)
    except (ValueError, TypeError) as exc:
        raise InvalidTrainingOptions(f"invalid training options: {exc}") from exc
    if config.weights:
        from sage.weights import WeightsError, resolve

        try:
            resolve(config.weights, config.backbone)
        except WeightsError as exc:
            # registered in the object storage by a `weights add` on another machine: workers fetch it
            from app.services.weights import check_registered

            try:
                known = session is not None and check_registered(session, config.weights, config.backbone)
            except WeightsError as other:
                raise InvalidTrainingOptions(f"invalid training options: {other}") from other
            if not known:
                raise InvalidTrainingOptions(f"invalid training options: {exc}") from exc
    check_bounds(config, settings)
    if len(config.labels) < 2:  # the project's state, not the request: 409
        raise TrainingError(
            f"project {project.id} has {len(config.labels)} label(s); a classifier needs at least two: "
            "set the project's labels first"
        )
    return merged


def check_web_options(options: dict[str, Any]) -> None:
    """Refuse what only the sage CLI may set: `pretrained_path` (a server file path)."""
    if "pretrained_path" in options:
        raise InvalidTrainingOptions(
            "pretrained_path cannot be set through SAGE Studio; register the file with "
            "`sage-studio weights add FILE` and set weights to its name (`sage-studio weights list`)"
        )


# --- create, join, cancel ------------------------------------------------------------------------


def lock_project(session: Session, project_id: int) -> None:
    """Serialise run creation per project until this transaction ends.

    PostgreSQL: a row lock. SQLite: a no-op write takes the database write lock at once (a plain
    read would let two creators both see "no run" and both insert).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
    else:
        session.execute(text("UPDATE projects SET id = id WHERE id = :pid"), {"pid": project_id})


def active_run(session: Session, project_id: int) -> TrainingRun | None:
    return session.scalars(
        select(TrainingRun)
        .where(TrainingRun.project_id == project_id, TrainingRun.status.in_(RunStatus.ACTIVE))
        .order_by(TrainingRun.id)
        .limit(1)
    ).first()


def latest_run(session: Session, project_id: int) -> TrainingRun | None:
    """The project's newest training run, whatever its status (None before the first)."""
    return session.scalar(
        select(TrainingRun)
        .where(TrainingRun.project_id == project_id)
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )


def labelled_image_count(session: Session, project_id: int) -> int:
    return session.execute(
        select(func.count())
        .select_from(Image)
        .where(Image.project_id == project_id, Image.label.is_not(None))
    ).scalar_one()


@dataclass
class RunRequest:
    run: TrainingRun
    created: bool  # False: an existing queued or running run was joined


def create_or_join_run(
    session: Session,
    project: Project,
    user: User | None,
    options: dict[str, Any] | None = None,
    *,
    force: bool = True,
    reason: str = "manual",
    settings: Settings | None = None,
) -> RunRequest | None:
    """Start a run for `project`, or join the one already queued or running.

    `force=False` (beat's periodic check) starts one only when retraining is due. Returns None when
    nothing was due. Commits; the caller then enqueues with `enqueue_run` (after the commit, so a
    fast worker never looks for a row that is not there yet).
    """
    resolved = resolve_options(project, options, settings, session)
    lock_project(session, project.id)
    existing = active_run(session, project.id)
    if existing is not None:
        session.commit()
        return RunRequest(existing, created=False)
    if not force and not retrain_due(session, project):
        session.commit()
        return None
    if labelled_image_count(session, project.id) == 0:
        session.rollback()
        raise TrainingError(f"project {project.id} has no labelled images yet: label some images, then train")
    run = TrainingRun(
        project_id=project.id,
        status=RunStatus.QUEUED,
        options=resolved,
        reason=reason,
        created_by_id=user.id if user else None,
        progress={"phase": "queued", "enqueued_at": utcnow().isoformat()},
    )
    session.add(run)
    session.flush()
    add_event(session, run.id, "status", {"status": RunStatus.QUEUED, "reason": reason})
    session.commit()
    return RunRequest(run, created=True)


def enqueue_run(celery: TaskSender, run_id: int) -> None:
    """Send the training job. Safe to repeat: only one delivery can claim the run."""
    celery.send_task(TASK_TRAIN, args=[run_id])


def request_cancel(session: Session, run: TrainingRun) -> TrainingRun:
    """A queued run is cancelled at once; a running one gets the flag its training loop checks."""
    now = utcnow()
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run.id, TrainingRun.status == RunStatus.QUEUED)
        .values(
            status=RunStatus.CANCELLED,
            cancel_requested=True,
            finished_at=now,
            progress={"phase": "cancelled"},
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]  # a CursorResult
        add_event(session, run.id, "status", {"status": RunStatus.CANCELLED})
    else:
        result = session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run.id, TrainingRun.status == RunStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]  # a CursorResult
            add_event(session, run.id, "log", {"message": "cancel requested"})
        else:
            # The run finished (or published its model) first: the cancel is refused, never
            # acknowledged and then ignored (publishing only succeeds while no cancel is set).
            session.rollback()
            session.refresh(run)
            raise TrainingError(f"training run {run.id} already finished ({run.status}); nothing to cancel")
    session.commit()
    session.refresh(run)
    return run


def list_runs(
    session: Session, project_id: int, limit: int = 50, before_id: int | None = None
) -> list[TrainingRun]:
    query = select(TrainingRun).where(TrainingRun.project_id == project_id)
    if before_id is not None:
        query = query.where(TrainingRun.id < before_id)
    return list(session.scalars(query.order_by(TrainingRun.id.desc()).limit(limit)))


def add_event(session: Session, run_id: int, kind: str, data: dict[str, Any]) -> None:
    session.add(TrainingEvent(run_id=run_id, kind=kind, data=data))


def events_after(session: Session, run_id: int, after_id: int, limit: int = 500) -> list[TrainingEvent]:
    return list(
        session.scalars(
            select(TrainingEvent)
            .where(TrainingEvent.run_id == run_id, TrainingEvent.id > after_id)
            .order_by(TrainingEvent.id)
            .limit(limit)
        )
    )


# --- the worker's side: claim, heartbeat, progress, finish ----------------------------------------


def claim_run(session: Session, run_id: int, worker_id: str) -> bool:
    """Take ownership of a queued run. False when someone else has it or it is no longer queued:
    a redelivered or duplicated message then does nothing."""
    now = utcnow()
    result = session.execute(
        update(TrainingRun)
        .where(
            TrainingRun.id == run_id,
            TrainingRun.status == RunStatus.QUEUED,
            TrainingRun.cancel_requested.is_(False),
        )
        .values(
            status=RunStatus.RUNNING,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            error=None,
            attempts=TrainingRun.attempts + 1,
            progress={"phase": "starting"},
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
        session.rollback()
        return False
    add_event(session, run_id, "status", {"status": RunStatus.RUNNING, "worker": worker_id})
    session.commit()
    return True


def _owned(run_id: int, worker_id: str):
    return (
        TrainingRun.id == run_id,
        TrainingRun.worker_id == worker_id,
        TrainingRun.status == RunStatus.RUNNING,
    )


def heartbeat(session: Session, run_id: int, worker_id: str, *, beat: bool = True) -> tuple[bool, bool]:
    """Refresh the heartbeat (when `beat`) and read the cancel flag: (still owned, cancel requested)."""
    if beat:
        result = session.execute(
            update(TrainingRun)
            .where(*_owned(run_id, worker_id))
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
            return False, False
    row = session.execute(select(TrainingRun.cancel_requested).where(*_owned(run_id, worker_id))).first()
    session.rollback()  # end the read transaction (SQLite WAL: do not pin a snapshot)
    if row is None:
        return False, False
    return True, bool(row[0])


def record_progress(
    session: Session, run_id: int, worker_id: str, progress: dict[str, Any], *, kind: str = "progress"
) -> bool:
    """Store the latest progress on the run and append it to the event stream; False if not owned."""
    result = session.execute(
        update(TrainingRun)
        .where(*_owned(run_id, worker_id))
        .values(progress=progress, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
        session.rollback()
        return False
    add_event(session, run_id, kind, progress)
    session.commit()
    return True


def record_lineage(session: Session, run_id: int, worker_id: str, lineage: dict[str, Any]) -> bool:
    result = session.execute(
        update(TrainingRun)
        .where(*_owned(run_id, worker_id))
        .values(lineage=lineage)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]  # a CursorResult


def finish_run(
    session: Session,
    run_id: int,
    worker_id: str,
    status: RunStatus,
    *,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
    model_id: int | None = None,
    commit: bool = True,
    unless_cancelled: bool = False,
) -> bool:
    """Move an owned run to a final status. False (and nothing written) when the run was taken
    away from this worker meanwhile (reaped), or, with `unless_cancelled`, when a cancel was
    requested: the caller must then discard what it produced."""
    assert status in RunStatus.FINISHED, status
    owned = _owned(run_id, worker_id)
    if unless_cancelled:
        owned = (*owned, TrainingRun.cancel_requested.is_(False))
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if metrics is not None:
        values["metrics"] = metrics
    if model_id is not None:
        values["model_id"] = model_id
    result = session.execute(
        update(TrainingRun).where(*owned).values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
        session.rollback()
        return False
    event: dict[str, Any] = {"status": status}
    if error:
        event["error"] = error
    if model_id is not None:
        event["model_id"] = model_id
    add_event(session, run_id, "status", event)
    if commit:
        session.commit()
    return True


# --- beat's side: reaping and retraining ----------------------------------------------------------


@dataclass
class ReapReport:
    requeued: list[int]
    failed: list[int]
    resent: list[int]


def reap_stale_runs(session: Session, settings: Settings, celery: TaskSender) -> ReapReport:
    """Runs whose owner stopped heart-beating are re-queued (attempts left) or failed; queued runs
    whose message may have been lost are sent again (claiming is idempotent, so a duplicate is harmless)."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.heartbeat_stale_s)
    report = ReapReport([], [], [])
    # populate_existing: the conditional updates below compare with what the row holds now.
    stale = session.scalars(
        select(TrainingRun)
        .where(
            TrainingRun.status == RunStatus.RUNNING,
            (TrainingRun.heartbeat_at.is_(None)) | (TrainingRun.heartbeat_at < stale_before),
        )
        .execution_options(populate_existing=True)
    ).all()
    for run in stale:
        where = (
            TrainingRun.id == run.id,
            TrainingRun.status == RunStatus.RUNNING,
            TrainingRun.worker_id == run.worker_id,
        )
        last_seen = as_utc(run.heartbeat_at)
        if run.attempts < settings.max_run_attempts and not run.cancel_requested:
            result = session.execute(
                update(TrainingRun)
                .where(*where)
                .values(
                    status=RunStatus.QUEUED,
                    worker_id=None,
                    progress={"phase": "queued", "enqueued_at": now.isoformat(), "requeued": True},
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]  # a CursorResult
                add_event(
                    session,
                    run.id,
                    "status",
                    {
                        "status": RunStatus.QUEUED,
                        "requeued": True,
                        "attempts": run.attempts,
                        "message": f"worker {run.worker_id} stopped responding (last heartbeat "
                        f"{last_seen.isoformat() if last_seen else 'never'}); re-queued",
                    },
                )
                report.requeued.append(run.id)
        else:
            why = "cancel was requested" if run.cancel_requested else f"{run.attempts} attempt(s) used"
            error = (
                f"worker {run.worker_id} stopped responding (last heartbeat "
                f"{last_seen.isoformat() if last_seen else 'never'}) and {why}; not retried"
            )
            status = RunStatus.CANCELLED if run.cancel_requested else RunStatus.FAILED
            result = session.execute(
                update(TrainingRun)
                .where(*where)
                .values(status=status, finished_at=now, error=error)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]  # a CursorResult
                add_event(session, run.id, "status", {"status": status, "error": error})
                report.failed.append(run.id)
    session.commit()

    # Queued runs nobody claimed for a while: send again. A run that merely waits behind other
    # projects' long runs would otherwise collect a duplicate every stale period (each a no-op
    # claim, but each costs a recycled train process), so the wait doubles with every re-send.
    queued = (
        select(TrainingRun)
        .where(TrainingRun.status == RunStatus.QUEUED)
        .execution_options(populate_existing=True)
    )
    for run in session.scalars(queued).all():
        enqueued_at = _parse_time((run.progress or {}).get("enqueued_at")) or as_utc(run.created_at)
        resends = int((run.progress or {}).get("resends", 0))
        wait = timedelta(seconds=settings.heartbeat_stale_s * 2 ** min(resends, MAX_RESEND_DOUBLINGS))
        if run.id in report.requeued or (enqueued_at and enqueued_at > now - wait):
            continue
        progress = {**(run.progress or {}), "enqueued_at": now.isoformat(), "resends": resends + 1}
        result = session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run.id, TrainingRun.status == RunStatus.QUEUED)
            .values(progress=progress)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]  # a CursorResult
            report.resent.append(run.id)
    session.commit()
    for run_id in report.requeued + report.resent:
        enqueue_run(celery, run_id)
    if report.requeued or report.failed or report.resent:
        log.warning(
            "reaper: requeued %s, failed %s, re-sent %s", report.requeued, report.failed, report.resent
        )
    return report


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def last_snapshot_at(session: Session, project_id: int) -> datetime | None:
    """When the data of the project's latest finished run was snapshotted.

    Retraining counts annotations changed since then. The latest finished run, not only the active
    model's, so that a run that failed (or was not activated) on unchanged data is not retried
    every check: only new annotations start a new run.
    """
    runs = session.scalars(
        select(TrainingRun)
        .where(TrainingRun.project_id == project_id, TrainingRun.status.in_(RunStatus.FINISHED))
        .order_by(TrainingRun.id.desc())
        .limit(20)
        .execution_options(populate_existing=True)
    )
    for run in runs:
        when = _parse_time((run.lineage or {}).get("snapshot_at"))
        if when is not None:
            return when
    active = active_model(session, project_id)
    return as_utc(active.created_at) if active else None


def changed_annotations(session: Session, project_id: int, since: datetime | None) -> int:
    """Readings (skips excluded: they change nothing training sees) and adjudications new or
    changed since `since`."""
    from app.tables import Adjudication

    query = (
        select(func.count())
        .select_from(Annotation)
        .where(Annotation.project_id == project_id, Annotation.status != ReadingStatus.SKIPPED)
    )
    adjudications = (
        select(func.count()).select_from(Adjudication).where(Adjudication.project_id == project_id)
    )
    if since is not None:
        query = query.where(Annotation.updated_at > since)
        adjudications = adjudications.where(Adjudication.updated_at > since)
    return (session.scalar(query) or 0) + (session.scalar(adjudications) or 0)


def retrain_due(session: Session, project: Project) -> bool:
    """At least `retrain_min_new` annotations new or changed since the last snapshot, and no run
    queued or running."""
    if active_run(session, project.id) is not None:
        return False
    since = last_snapshot_at(session, project.id)
    return changed_annotations(session, project.id, since) >= max(1, project.retrain_min_new)


def retrain_check(session: Session, celery: TaskSender) -> list[int]:
    """Beat's periodic check: start a run in each project where retraining is due."""
    started: list[int] = []
    project_ids = session.scalars(select(Project.id).where(Project.retrain_enabled.is_(True))).all()
    session.rollback()
    for project_id in project_ids:
        try:
            run_id = _retrain_one(session, celery, project_id)
        except Exception as exc:  # noqa: BLE001 - one project's problem must not stop the others
            session.rollback()
            detail = getattr(exc, "detail", None) or f"{exc.__class__.__name__}: {exc}"
            log.warning("retrain check: project %s not started: %s", project_id, detail)
            _set_retrain_error(session, project_id, f"scheduled retraining could not start: {detail}")
            continue
        if run_id is not None:
            started.append(run_id)
    return started


def _retrain_one(session: Session, celery: TaskSender, project_id: int) -> int | None:
    project = session.get(Project, project_id)
    if project is None or not retrain_due(session, project):
        session.rollback()
        return None
    request = create_or_join_run(session, project, None, None, force=False, reason="scheduled")
    if project.retrain_error is not None:
        _set_retrain_error(session, project_id, None)
    if request is not None and request.created:
        enqueue_run(celery, request.run.id)
        return request.run.id
    return None


def _set_retrain_error(session: Session, project_id: int, error: str | None) -> None:
    """Record (or clear) why scheduled retraining of a project could not start; the project page
    and `GET /projects/{pid}` show it."""
    try:
        session.execute(
            update(Project)
            .where(Project.id == project_id)
            .values(retrain_error=error[:2000] if error else None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    except Exception:
        session.rollback()
        log.exception("retrain check: could not record the error of project %s", project_id)
