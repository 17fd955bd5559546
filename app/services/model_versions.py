"""Model versions: register a trained artifact, decide and perform activation, roll back.

Exactly one version per project is active at a time. Activation locks the project (see
`training.lock_project`) so a worker finishing a run and a manager activating by hand cannot
both leave a model active.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.queue import TASK_PREDICT_MISSING, TASK_PREDICT_PROJECT, TASK_REALIGN
from app.services.errors import Conflict
from app.services.lookups import active_model
from app.services.runs import TaskSender, TrainingError, add_event, finish_run, lock_project
from app.tables import ModelVersion, Prediction, Project, RunStatus, TrainingRun, utcnow

log = logging.getLogger(__name__)
# TrainingRun.reason of the run an inverted-saliency sanity check trains (app.services.jobs)
SANITY_CHECK_REASON = "sanity-check"


def list_models(session: Session, project_id: int) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.project_id == project_id)
            .order_by(ModelVersion.version.desc())
        )
    )


def beats(candidate: dict[str, Any], incumbent: dict[str, Any] | None) -> bool:
    """Whether a new model's validation metrics beat the active model's.

    Higher validation accuracy wins; on a tie, lower validation loss. The worker passes the active
    model's metrics measured on the new run's own (fixed) validation images, so both numbers come
    from the same images; a manager can always activate or roll back by hand.
    """
    if incumbent is None:
        return True
    acc, best_acc = candidate.get("val_accuracy"), incumbent.get("val_accuracy")
    if acc is None:
        return False
    if best_acc is None or acc > best_acc + 1e-9:
        return True
    if abs(acc - best_acc) <= 1e-9:
        loss, best_loss = candidate.get("val_loss"), incumbent.get("val_loss")
        return loss is not None and best_loss is not None and loss < best_loss - 1e-9
    return False


def _activate_locked(session: Session, project_id: int, model: ModelVersion) -> None:
    session.execute(
        update(ModelVersion)
        .where(
            ModelVersion.project_id == project_id, ModelVersion.active.is_(True), ModelVersion.id != model.id
        )
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    model.active = True
    model.activated_at = utcnow()


def register_model(
    session: Session,
    run_id: int,
    worker_id: str,
    *,
    artifact_key: str,
    checksum: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    incumbent_on_val: dict[str, Any] | None = None,
) -> tuple[ModelVersion, bool] | None:
    """Record a run's published artifact as the project's next model version, activate it when the
    project's policy says so, and mark the run succeeded: one transaction, so a crash leaves either
    all of it or none. None when the run is no longer owned by `worker_id` (nothing is written).

    incumbent_on_val: the active model's {"model_id", "val_accuracy", "val_loss"} measured on this
    run's validation images; used for the comparison while that model is still the active one,
    else the active model's stored metrics are."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        return None
    project = session.get_one(Project, run.project_id)
    lock_project(session, project.id)
    version = (
        session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.project_id == project.id))
        or 0
    ) + 1
    model = ModelVersion(
        project_id=project.id,
        run_id=run.id,
        version=version,
        artifact_key=artifact_key,
        checksum=checksum,
        backbone=config.get("backbone", project.backbone),
        labels=list(config.get("labels") or project.labels or []),
        config=config,
        metrics=metrics,
    )
    session.add(model)
    session.flush()
    incumbent = active_model(session, project.id)
    reference = incumbent.metrics if incumbent else None
    if incumbent is not None and incumbent_on_val and incumbent_on_val.get("model_id") == incumbent.id:
        reference = incumbent_on_val
    sanity = run.reason == SANITY_CHECK_REASON  # an inverted-saliency sanity check never serves
    activate = not sanity and project.activation_policy == "auto" and beats(metrics, reference)
    if activate:
        _activate_locked(session, project.id, model)
    if not finish_run(
        session,
        run_id,
        worker_id,
        RunStatus.SUCCEEDED,
        metrics=metrics,
        model_id=model.id,
        commit=False,
        unless_cancelled=True,
    ):
        # Reaped, or a cancel arrived while publishing: the cancel wins, nothing is activated.
        session.rollback()
        finish_run(session, run_id, worker_id, RunStatus.CANCELLED, error="cancelled while publishing")
        return None
    add_event(
        session,
        run_id,
        "log",
        {
            "message": f"model version {version} "
            + (
                "activated"
                if activate
                else "kept inactive (the inverted-saliency sanity check)"
                if sanity
                else f"kept inactive (policy {project.activation_policy})"
            ),
            "model_id": model.id,
            "activated": activate,
        },
    )
    session.commit()
    return model, activate


def activate_model(session: Session, model: ModelVersion) -> ModelVersion:
    """Make `model` its project's active version (activation by hand, or a rollback). A sanity
    check's model is refused (Conflict): it was trained on inverted maps to be compared, not used."""
    if is_sanity_check_model(session, model):
        raise Conflict(
            f"model version {model.version} is an inverted-saliency sanity check; it is never activated"
        )
    lock_project(session, model.project_id)
    session.refresh(model)
    _activate_locked(session, model.project_id, model)
    session.commit()
    return model


def is_sanity_check_model(session: Session, model: ModelVersion) -> bool:
    run = session.get(TrainingRun, model.run_id) if model.run_id else None
    return run is not None and run.reason == SANITY_CHECK_REASON


def has_predictions(session: Session, model_id: int) -> bool:
    return session.scalar(select(Prediction.id).where(Prediction.model_id == model_id).limit(1)) is not None


def enqueue_project_predictions(celery: TaskSender, model_id: int, after_image_id: int = 0) -> None:
    """Predict every image of the model's project (after the commit that activated it)."""
    celery.send_task(TASK_PREDICT_PROJECT, args=[model_id, after_image_id] if after_image_id else [model_id])


def enqueue_fresh_predictions(celery: TaskSender, project_id: int) -> None:
    """Predict the project's new images with its active model (after the commit that added them).
    A no-op in the worker when the project has no active model."""
    celery.send_task(TASK_PREDICT_MISSING, args=[project_id])


def enqueue_realign(celery: TaskSender, image_id: int) -> None:
    """Re-align the active model's prediction of an image whose consensus map changed."""
    celery.send_task(TASK_REALIGN, args=[image_id])


def after_images_added(session: Session, celery: TaskSender, project_id: int) -> bool:
    """Call after the commit that added images: when the project has an active model, its
    predictions of them are computed in the background. A broker error is logged, not raised
    (beat's periodic sweep predicts them later). Returns whether a job was sent."""
    if active_model(session, project_id) is None:
        return False
    try:
        enqueue_fresh_predictions(celery, project_id)
    except Exception:
        log.exception("could not enqueue predictions of project %s's new images", project_id)
        return False
    return True


def after_consensus_changed(session: Session, celery: TaskSender, project_id: int, image_id: int) -> bool:
    """Call after the commit that changed an image's annotations (consensus or adjudicated map):
    the active model's alignment for it is recomputed in the background."""
    if active_model(session, project_id) is None:
        return False
    try:
        enqueue_realign(celery, image_id)
    except Exception:
        log.exception("could not enqueue re-alignment of image %s", image_id)
        return False
    return True


def require_active_model(session: Session, project_id: int) -> ModelVersion:
    model = active_model(session, project_id)
    if model is None:
        raise TrainingError(
            f"project {project_id} has no active model yet: train one "
            f"(POST /api/v1/projects/{project_id}/training-runs) or activate a version "
            "(POST /api/v1/models/{mid}/activate)"
        )
    return model
