"""REST API v1: predictions (predict an upload through the predict queue, stored predictions,
heatmaps, the review gallery).

`POST /projects/{pid}/predict` sends the image to the predict workers by task name and waits up to
`SAGE_PREDICT_TIMEOUT_S` for the answer (or, with `?async=true`, answers 202 with a job to poll at
`GET /predict-jobs/{job_id}`). The web process never loads a model.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Annotated, Any

import numpy as np
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from fastapi import APIRouter, File, HTTPException, Path, Query, Request, Response, UploadFile, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.deps import (
    CurrentUser,
    ImageViewer,
    ProjectViewer,
    SessionDep,
    SettingsDep,
    StorageDep,
    check_project_access,
)
from app.imaging import ImageError, decode_image
from app.queue import TASK_PREDICT
from app.schemas import API, PredictAnswer, PredictJob, StoredPrediction
from app.services import jobs as job_service
from app.services import model_versions as model_service
from app.services import predictions as prediction_service
from app.services import reading
from app.storage import Storage
from app.tables import Image, ModelVersion, Prediction, Project, Role

log = logging.getLogger(__name__)
router = APIRouter(tags=["predictions"])

ASYNC_JOB_EXPIRES_S = 600.0
JobId = Annotated[str, Path(min_length=8, max_length=64, pattern=r"^[0-9a-fA-F-]+$")]


def _active_model_or_409(session: Session, project_id: int) -> ModelVersion:
    return model_service.require_active_model(session, project_id)


@router.post(
    "/projects/{pid}/predict",
    response_model=PredictAnswer | PredictJob,
    responses={
        202: {"model": PredictJob},
        409: {"description": "no active model"},
        429: {"description": "async: the project's queue of predictions is full; retry after Retry-After"},
        503: {"description": "too many predictions waiting; retry after Retry-After"},
        504: {"model": PredictJob},
    },
)
async def predict(
    project: ProjectViewer,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="the image (PNG, JPEG, TIFF, BMP or DICOM)")],
    run_async: Annotated[bool, Query(alias="async", description="answer 202 with a job to poll")] = False,
    heatmap: Annotated[
        str,
        Query(
            pattern="^(overlay|raw|both|none)$",
            description="overlay: heatmap_png blended over the image; raw: raw_heatmap_png, the 8-bit "
            "grayscale map at the image's size; both; none",
        ),
    ] = "overlay",
) -> PredictAnswer | PredictJob:
    """Label, probabilities, model version and id, and the heatmap (base64 PNG) for one image:
    blended over the image (`heatmap_png`), raw (`raw_heatmap_png`), both or none.

    The image goes to the predict worker by storage key (the message stays small); the wait for
    the answer holds no request thread. A bounded number of synchronous predicts wait at once
    (503 with Retry-After beyond); a project has at most `SAGE_MAX_QUEUED_JOBS_PER_PROJECT`
    asynchronous predicts pending per web process (429 with Retry-After beyond)."""
    pending = request.app.state.pending_predicts
    limit = settings.max_queued_jobs_per_project
    if run_async and await run_in_threadpool(pending.count, project.id) >= limit:
        raise job_service.queue_full(project.id, limit, "asynchronous predictions")
    job = await run_in_threadpool(_prepare_job, session, storage, settings, project.id, file, heatmap)
    celery = request.app.state.celery
    expires = ASYNC_JOB_EXPIRES_S if run_async else settings.predict_timeout_s
    result: AsyncResult = await run_in_threadpool(celery.send_task, TASK_PREDICT, args=[job], expires=expires)
    if run_async:
        pending.add(project.id, result, expires)
        response.status_code = status.HTTP_202_ACCEPTED
        return PredictJob(job_id=result.id, status="pending", poll_url=f"{API}/predict-jobs/{result.id}")
    answer = await request.app.state.predict_limiter.hold(_wait_for(result, settings.predict_timeout_s))
    return PredictAnswer(**answer)


def _prepare_job(
    session: Session, storage: Storage, settings: Any, project_id: int, file: UploadFile, heatmap: str
) -> dict[str, Any]:
    """Check the upload, store it (content-addressed; unreferenced, so the orphan sweep removes it
    after its grace period) and build the worker's message."""
    model = _active_model_or_409(session, project_id)
    data = file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"the image is over {settings.max_upload_bytes} bytes",
        )
    try:
        decoded = decode_image(data, max_pixels=settings.max_image_pixels, what=file.filename or "the file")
    except ImageError as exc:
        raise HTTPException(exc.status_code, detail=exc.detail) from None
    key = storage.put_bytes(data, decoded.suffix)
    job = {
        "project_id": project_id,
        "model_id": model.id,
        "model_version": model.version,
        "artifact_key": model.artifact_key,
        "checksum": model.checksum,
        "image_key": key,
        "heatmap": heatmap in ("overlay", "both"),
        "raw_heatmap": heatmap in ("raw", "both"),
    }
    session.close()  # do not hold a connection while waiting for the worker
    return job


async def _wait_for(result: AsyncResult, timeout_s: float) -> dict[str, Any]:
    """The worker's answer, polled with backoff from the event loop (no thread held meanwhile)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while not await run_in_threadpool(result.ready):
        if time.monotonic() >= deadline:
            raise HTTPException(
                status.HTTP_504_GATEWAY_TIMEOUT,
                detail={
                    "message": f"no predict worker answered within {timeout_s:.0f} s; "
                    "poll the job later or check that a worker consumes the `predict` queue",
                    "job_id": result.id,
                    "poll_url": f"{API}/predict-jobs/{result.id}",
                },
            )
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.2)
    try:
        return await run_in_threadpool(lambda: result.get(timeout=5, propagate=True))
    except CeleryTimeout:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, detail="the answer could not be read") from None
    except Exception as exc:  # noqa: BLE001 - the worker's error, re-raised by Celery
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"prediction failed: {exc}") from None


@router.get("/predict-jobs/{job_id}", response_model=PredictJob)
def predict_job(job_id: JobId, user: CurrentUser, session: SessionDep, request: Request) -> PredictJob:
    """The state of an asynchronous prediction; its answer once it succeeded. A job's answer is
    shown only to members of its project (a pending job reveals nothing)."""
    result = AsyncResult(job_id, app=request.app.state.celery)
    state = result.state
    poll_url = f"{API}/predict-jobs/{job_id}"
    if state == "SUCCESS":
        answer = result.result
        check_project_access(session, user, int(answer["project_id"]), Role.VIEWER)
        return PredictJob(
            job_id=job_id, status="succeeded", poll_url=poll_url, result=PredictAnswer(**answer)
        )
    if state in ("FAILURE", "REVOKED"):
        return PredictJob(job_id=job_id, status="failed", poll_url=poll_url, error=str(result.result))
    return PredictJob(job_id=job_id, status="running" if state == "STARTED" else "pending", poll_url=poll_url)


def _stored_for_image(session: Session, image: Image) -> tuple[Prediction, ModelVersion]:
    model = _active_model_or_409(session, image.project_id)
    row = prediction_service.prediction_for(session, image.id, model.id)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"image {image.id} has no stored prediction of the active model (version {model.version}) "
            "yet; predictions are computed after activation: try again shortly",
        )
    return row, model


@router.get("/images/{iid}/prediction", response_model=StoredPrediction)
def image_prediction(image: ImageViewer, user: CurrentUser, session: SessionDep) -> StoredPrediction:
    """The stored prediction of the project's active model for this image, with heatmap URLs.
    Blind reading: no alignment (nor the readers' label) until the caller has read the image."""
    row, model = _stored_for_image(session, image)
    out = StoredPrediction.from_row(row, model_version=model.version, image_label=image.label)
    if reading.hidden_image_ids(session, session.get(Project, image.project_id), user, [image.id]):
        reading.redact_prediction(out, image.import_label)
    return out


PNG = {200: {"content": {"image/png": {}}}}


@router.get("/images/{iid}/prediction/heatmap.png", response_class=Response, responses=PNG)
def image_prediction_heatmap(image: ImageViewer, session: SessionDep, storage: StorageDep) -> Response:
    """The active model's heatmap for the image: 8-bit grayscale PNG at the image's size."""
    row, _ = _stored_for_image(session, image)
    if not row.heatmap_key:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this prediction has no heatmap")
    return Response(
        storage.read_bytes(row.heatmap_key),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )


def render_overlay(
    session: Session, storage: Storage, image: Image, heatmap_key: str, max_side: int
) -> bytes:
    """The heatmap colour-mapped and blended over the image in its default display window (DICOM
    and 16-bit images too), downscaled to at most `max_side` pixels on its longest side before
    blending, so the colour map and blend never run at a huge image's full size."""
    from PIL import Image as PILImage

    from app.services.images import display_window, pixel_array
    from sage.heatmaps import overlay_png
    from sage.imageio import render_8bit

    pixels = pixel_array(session, storage, image)
    picture = PILImage.fromarray(render_8bit(pixels, *display_window(image)))
    del pixels
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), PILImage.Resampling.BILINEAR)
    heat_image = PILImage.open(io.BytesIO(storage.read_bytes(heatmap_key)))
    if max(heat_image.size) > max(picture.size):
        heat_image = heat_image.resize(picture.size, PILImage.Resampling.BILINEAR)
    heat = np.asarray(heat_image, dtype=np.float32) / 255.0
    return overlay_png(picture, heat)


@router.get(
    "/images/{iid}/prediction/overlay.png",
    response_class=Response,
    responses={**PNG, 503: {"description": "too many renders at once; retry after Retry-After"}},
)
async def image_prediction_overlay(
    request: Request, image: ImageViewer, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """The heatmap colour-mapped and blended over the image (PNG, at most `SAGE_DISPLAY_MAX_SIDE`
    pixels on its longest side). Renders run a bounded number at a time (503 with Retry-After
    when the server stays busy)."""
    row, _ = await run_in_threadpool(_stored_for_image, session, image)
    if not row.heatmap_key:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this prediction has no heatmap")
    png = await request.app.state.render_limiter.run(
        render_overlay, session, storage, image, row.heatmap_key, settings.display_max_side
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/projects/{pid}/predictions", response_model=list[StoredPrediction])
def list_predictions(
    project: ProjectViewer,
    user: CurrentUser,
    session: SessionDep,
    sort: Annotated[str, Query(pattern="^(uncertainty|misalignment|confidence|image)$")] = "uncertainty",
    label: Annotated[
        str | None, Query(max_length=100, description="only images predicted as this label")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[StoredPrediction]:
    """The active model's stored predictions, for the review gallery: least certain first
    (`uncertainty`), heatmap least like the human saliency first (`misalignment`), ..."""
    model = _active_model_or_409(session, project.id)
    rows = prediction_service.list_predictions(
        session, project.id, model.id, sort=sort, limit=limit, offset=offset, label=label
    )
    hidden = reading.hidden_image_ids(session, project, user, [image.id for _, image in rows])
    answers = []
    for p, image in rows:
        out = StoredPrediction.from_row(p, model_version=model.version, image_label=image.label)
        answers.append(reading.redact_prediction(out, image.import_label) if image.id in hidden else out)
    return answers
