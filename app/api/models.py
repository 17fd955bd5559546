"""REST API v1: model versions (list, activate or roll back by hand)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel

from app.deps import MAX_ID, CurrentUser, ProjectViewer, SessionDep, check_project_access
from app.models import ModelVersion
from app.services import models as model_service
from app.services.lookups import get_or_404

log = logging.getLogger(__name__)
router = APIRouter(tags=["models"])

ModelId = Annotated[int, Path(ge=1, le=MAX_ID, description="model version id")]


class ModelOut(BaseModel):
    id: int
    project_id: int
    version: int
    active: bool
    run_id: int | None
    backbone: str
    labels: list[str]
    metrics: dict[str, Any]
    config: dict[str, Any]
    checksum: str
    created_at: datetime
    activated_at: datetime | None


def model_out(model: ModelVersion) -> ModelOut:
    return ModelOut(
        id=model.id,
        project_id=model.project_id,
        version=model.version,
        active=model.active,
        run_id=model.run_id,
        backbone=model.backbone,
        labels=list(model.labels or []),
        metrics=model.metrics or {},
        config=model.config or {},
        checksum=model.checksum,
        created_at=model.created_at,
        activated_at=model.activated_at,
    )


@router.get("/projects/{pid}/models", response_model=list[ModelOut])
def list_models(project: ProjectViewer, session: SessionDep) -> list[ModelOut]:
    """The project's model versions, newest first; `active` marks the one serving predictions."""
    return [model_out(m) for m in model_service.list_models(session, project.id)]


@router.post(
    "/models/{mid}/activate",
    response_model=ModelOut,
    responses={
        403: {"description": "managers only"},
        404: {"description": "no such model"},
        409: {"description": "an inverted-saliency sanity check's model is never activated"},
    },
)
def activate_model(mid: ModelId, user: CurrentUser, session: SessionDep, request: Request) -> ModelOut:
    """Make this version the active one (activation by hand under the manual policy, or a rollback).
    The project's images are then predicted with it unless that was already done."""
    model = get_or_404(session, ModelVersion, mid, "model")
    try:
        check_project_access(session, user, model.project_id, "manager")
    except HTTPException as exc:
        if exc.status_code == 404:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no model {mid}") from None
        raise
    model = model_service.activate_model(session, model)
    if not model_service.has_predictions(session, model.id):
        try:
            model_service.enqueue_project_predictions(request.app.state.celery, model.id)
        except Exception:  # activation stands; predictions can be re-triggered
            log.exception("could not enqueue predictions for model %s", model.id)
    return model_out(model)
