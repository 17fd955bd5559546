"""REST API v1: model versions (list, activate or roll back by hand)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from app.deps import (
    MAX_ID,
    CurrentUser,
    ProjectViewer,
    SessionDep,
    SettingsDep,
    StorageDep,
    row_in_project,
)
from app.schemas import ModelOut
from app.services import model_versions as model_service
from app.storage import CHUNK, LocalStorage, make_key
from app.tables import ModelVersion, Role

log = logging.getLogger(__name__)
router = APIRouter(tags=["models"])

ModelId = Annotated[int, Path(ge=1, le=MAX_ID, description="model version id")]


@router.get("/projects/{pid}/models", response_model=list[ModelOut])
def list_models(project: ProjectViewer, session: SessionDep) -> list[ModelOut]:
    """The project's model versions, newest first; `active` marks the one serving predictions."""
    return [ModelOut.model_validate(m) for m in model_service.list_models(session, project.id)]


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
    model = row_in_project(session, user, ModelVersion, mid, "model", Role.MANAGER)
    model = model_service.activate_model(session, model)
    if not model_service.has_predictions(session, model.id):
        try:
            model_service.enqueue_project_predictions(request.app.state.celery, model.id)
        except Exception:  # activation stands; predictions can be re-triggered
            log.exception("could not enqueue predictions for model %s", model.id)
    return ModelOut.model_validate(model)


@router.get(
    "/models/{mid}/weights",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "model.pt (torch.save format)"},
        307: {"description": "S3 storage with SAGE_S3_PRESIGNED_DOWNLOADS: a short-lived presigned URL"},
        401: {"description": "not signed in"},
        403: {"description": "not a manager of the model's project"},
        404: {"description": "no such model, or its weights are not in the object storage"},
        422: {"description": "invalid model id"},
    },
)
def model_weights(
    mid: ModelId, user: CurrentUser, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """Download a model version's weights (managers of its project): `model.pt`, checked by its
    SHA-256 (`checksum`). With S3 storage and SAGE_S3_PRESIGNED_DOWNLOADS the answer redirects to a
    presigned URL of the bucket, issued only after the permission check."""
    model = row_in_project(session, user, ModelVersion, mid, "model", Role.MANAGER)
    try:
        key = make_key(model.checksum, ".pt")
    except ValueError:
        key = None
    if key is None or not storage.exists(key):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"the weights of model {mid} are not in the object storage (an artifact of an earlier "
            "release: `sage-studio storage migrate` copies it there)",
        )
    filename = f"project-{model.project_id}-model-v{model.version}.pt"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "ETag": f'"{model.checksum}"'}
    if settings.s3_presigned_downloads:
        url = storage.presigned_url(key, content_type="application/octet-stream", filename=filename)
        if url is not None:
            return RedirectResponse(
                url, status.HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"}
            )
    if isinstance(storage, LocalStorage):
        return FileResponse(storage.path(key), media_type="application/octet-stream", headers=headers)
    stream = storage.open(key)

    def chunks():
        with stream:
            while chunk := stream.read(CHUNK):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)
