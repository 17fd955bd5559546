"""REST API v1: model downloads (export archives), batch predictions, and the jobs behind them.

`GET /models/{mid}/download?format=...` answers the archive (200, application/zip) once it was
built, else 202 with the export job (poll it, or ask the same URL again); the archive is built by
a worker (`sage.export_model`) and kept in storage, so the web process never loads torch.
`POST /projects/{pid}/predict-batch` stores the uploaded zip or files and answers 202 with a job
whose result (`GET /jobs/{jid}/result`) is a zip laid out like `python -m sage predict`'s output.
"""

from __future__ import annotations

import io
import zipfile
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, Response, UploadFile, status
from fastapi.responses import RedirectResponse, StreamingResponse

from app.deps import (
    MAX_ID,
    CurrentUser,
    ProjectManager,
    ProjectViewer,
    SessionDep,
    SettingsDep,
    StorageDep,
    row_in_project,
)
from app.schemas import JobOut, RepredictOut, SanityCheckOut
from app.services import jobs as job_service
from app.services import model_versions as model_service
from app.services.errors import Invalid, TooLarge, Unsupported
from app.services.lookups import get_or_404
from app.tables import Job, JobStatus, ModelVersion, Role

router = APIRouter(tags=["jobs"])

JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]
ModelIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="model version id")]
ROLE_OF_KIND = {"export": Role.MANAGER, "sanity_check": Role.MANAGER, "predict_batch": Role.VIEWER}
ZIP = {"content": {"application/zip": {}}}


def _visible_job(session, user, jid: int) -> Job:
    job = get_or_404(session, Job, jid, "job")
    return row_in_project(session, user, Job, jid, "job", ROLE_OF_KIND.get(job.kind, Role.MANAGER))


PRESIGNED = {"description": "S3 storage with SAGE_S3_PRESIGNED_DOWNLOADS: a short-lived presigned URL"}


def _zip_response(
    storage, settings, key: str, filename: str, sha256: str | None
) -> StreamingResponse | RedirectResponse:
    """The stored zip: a 307 to a short-lived presigned URL of the bucket when the backend has one
    and SAGE_S3_PRESIGNED_DOWNLOADS is on (callers check permissions first), else streamed."""
    if settings.s3_presigned_downloads:
        url = storage.presigned_url(key, content_type="application/zip", filename=filename)
        if url is not None:
            return RedirectResponse(
                url, status.HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"}
            )

    def chunks():
        with storage.open(key) as fh:
            while block := fh.read(1 << 20):
                yield block

    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if sha256:
        headers["X-Checksum-SHA256"] = sha256
    return StreamingResponse(chunks(), media_type="application/zip", headers=headers)


@router.get(
    "/models/{mid}/download",
    response_class=Response,
    responses={
        200: {**ZIP, "description": "the archive: model, model.json, SHA256SUMS"},
        202: {"model": JobOut, "description": "being built: poll the job or ask again"},
        307: PRESIGNED,
        403: {"description": "managers only"},
        404: {"description": "no such model"},
        409: {"description": "the last export of this format failed (retry=true builds it again)"},
        422: {"description": "unknown format"},
        429: {"description": "the project's queue of jobs is full; retry after Retry-After"},
    },
)
def download_model(
    mid: ModelIdPath,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    request: Request,
    format: Annotated[str, Query(pattern="^(torchscript|onnx|state_dict)$")] = "onnx",
    retry: Annotated[bool, Query(description="build again after a failed export")] = False,
) -> Response:
    """The model version as a self-contained archive (managers). The first request for a format
    answers 202 with the export job; once it succeeded the same URL answers the zip."""
    model = row_in_project(session, user, ModelVersion, mid, "model", Role.MANAGER)
    job, created = job_service.request_export(
        session, model, format, user, retry=retry, limit=settings.max_queued_jobs_per_project
    )
    if job.status == JobStatus.SUCCEEDED and job.result_key:
        return _zip_response(
            storage, settings, job.result_key, job_service.export_filename(model, format), job.result_sha256
        )
    session.commit()
    if created:
        job_service.enqueue(request.app.state.celery, job)
    out = JobOut.model_validate(job)
    return Response(
        content=out.model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
        headers={"Retry-After": "2", "Location": out.poll_url},
    )


@router.get("/jobs/{jid}", response_model=JobOut, responses={404: {"description": "no such job"}})
def get_job(jid: JobIdPath, user: CurrentUser, session: SessionDep) -> JobOut:
    """A job's status and progress; `result_url` once it succeeded."""
    return JobOut.model_validate(_visible_job(session, user, jid))


@router.get(
    "/jobs/{jid}/result",
    response_class=Response,
    responses={
        200: ZIP,
        307: PRESIGNED,
        404: {"description": "no such job"},
        409: {"description": "not finished"},
        410: {"description": "the result expired (SAGE_JOB_RESULT_TTL_S) and was deleted"},
    },
)
def job_result(
    jid: JobIdPath, user: CurrentUser, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """The job's result zip (a batch prediction: predictions.csv, heatmaps/, errors.csv)."""
    job = _visible_job(session, user, jid)
    if job.status == JobStatus.EXPIRED:
        raise HTTPException(
            status.HTTP_410_GONE,
            detail=f"the result of job {jid} expired on {(job.result or {}).get('expired_at', 'an earlier date')} "
            f"and was deleted (results are kept {settings.job_result_ttl_s / 86400:g} days after the job "
            "finished, SAGE_JOB_RESULT_TTL_S); submit the batch again",
        )
    if job.status != JobStatus.SUCCEEDED or not job.result_key:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {jid} is {job.status}"
            + (f": {job.error}" if job.error else "; poll it until it succeeded"),
        )
    return _zip_response(storage, settings, job.result_key, f"job-{jid}-{job.kind}.zip", job.result_sha256)


def _input_zip(files: list[UploadFile], settings) -> tuple[bytes, int]:
    """One zip of the inputs: an uploaded zip as it is (checked for zip slip and bombs), or the
    uploaded image files zipped under their (sanitised, de-duplicated) names."""
    from app.services.datasets import ZipSource
    from app.services.images import safe_name

    if len(files) == 1:
        head = files[0].file.read(4)
        files[0].file.seek(0)
        if head[:2] == b"PK":
            data = files[0].file.read(settings.max_import_bytes + 1)
            if len(data) > settings.max_import_bytes:
                raise TooLarge(f"the zip is over the limit of {settings.max_import_bytes:,} bytes")
            source = ZipSource(io.BytesIO(data), settings)
            count = sum(
                1
                for n in source.names()
                if n.rsplit(".", 1)[-1].lower() in ("png", "jpg", "jpeg", "tif", "tiff", "bmp")
            )
            if not count:
                raise Invalid("the zip holds no images (png, jpeg, tiff, bmp)")
            return data, count
    buf = io.BytesIO()
    used: set[str] = set()
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, upload in enumerate(files):
            data = upload.file.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise TooLarge(
                    f"{upload.filename or f'file {i + 1}'} is over {settings.max_upload_bytes:,} bytes"
                )
            if data[:2] == b"PK":
                raise Unsupported("send one zip, or image files; not a zip among several files")
            total += len(data)
            if total > settings.max_import_bytes:
                raise TooLarge(
                    f"the files are over the limit of {settings.max_import_bytes:,} bytes together"
                )
            name = safe_name(upload.filename) or f"image-{i + 1}.png"
            stem, dot, suffix = name.rpartition(".")
            candidate, n = name, 1
            while candidate in used:
                n += 1
                candidate = f"{stem}-{n}.{suffix}" if dot else f"{name}-{n}"
            used.add(candidate)
            zf.writestr(candidate, data)
    return buf.getvalue(), len(files)


@router.post(
    "/projects/{pid}/predict-batch",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "no such project"},
        409: {"description": "no active model"},
        413: {"description": "too large"},
        415: {"description": "a zip among several files"},
        422: {"description": "no images, or a broken zip"},
        429: {"description": "the project's queue of jobs is full; retry after Retry-After"},
    },
)
def predict_batch(
    project: ProjectViewer,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    request: Request,
    files: Annotated[list[UploadFile], File(description="one zip of images, or several image files")],
    heatmaps: Annotated[bool, Form(description="also write heatmaps/<name>.png")] = False,
) -> JobOut:
    """Predict many images with the active model in one job; poll `poll_url`, then fetch
    `result_url` (a zip: predictions.csv, heatmaps/ at each image's size, errors.csv)."""
    model = model_service.require_active_model(session, project.id)
    if not files:
        raise Invalid("send one zip or at least one image file")
    job_service.check_queue_room(session, project.id, settings.max_queued_jobs_per_project)
    data, count = _input_zip(files, settings)
    key = storage.put_bytes(data, ".zip")
    job = job_service.create_job(
        session,
        project.id,
        "predict_batch",
        {
            "model_id": model.id,
            "model_version": model.version,
            "input_key": key,
            "heatmaps": heatmaps,
            "images": count,
        },  # fmt: skip
        user,
    )
    session.commit()
    job_service.enqueue(request.app.state.celery, job)
    return JobOut.model_validate(job)


@router.post(
    "/projects/{pid}/predictions/refresh",
    response_model=RepredictOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        403: {"description": "managers only"},
        404: {"description": "no such project"},
        409: {"description": "no active model"},
    },
)
def repredict_all(project: ProjectManager, session: SessionDep, request: Request) -> RepredictOut:
    """Re-predict every image of the project with its active model (managers), e.g. after the
    images or the heatmap code changed; stored predictions are replaced image by image."""
    model = model_service.require_active_model(session, project.id)
    model_service.enqueue_project_predictions(request.app.state.celery, model.id)
    return RepredictOut.from_row(model, status="queued")


def _model_for(session, user, mid: int, role: Role) -> ModelVersion:
    return row_in_project(session, user, ModelVersion, mid, "model", role)


@router.post(
    "/models/{mid}/sanity-check",
    response_model=SanityCheckOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        403: {"description": "managers only"},
        404: {"description": "no such model"},
        409: {"description": "a training run is already queued or running"},
        422: {"description": "the model's method has no inverted variant (only sage has)"},
    },
)
def start_sanity_check(
    mid: ModelIdPath, user: CurrentUser, session: SessionDep, request: Request
) -> SanityCheckOut:
    """Train this model's configuration again with inverted saliency maps (managers); the result is
    never activated and is shown beside the model with a one-line reading."""
    from app.services.runs import enqueue_run

    model = _model_for(session, user, mid, Role.MANAGER)
    _, run_id = job_service.start_sanity_check(session, model, user)
    enqueue_run(request.app.state.celery, run_id)
    return SanityCheckOut(**job_service.sanity_report(session, model))


@router.get(
    "/models/{mid}/sanity-check",
    response_model=SanityCheckOut,
    responses={404: {"description": "no such model, or no sanity check of it yet"}},
)
def get_sanity_check(mid: ModelIdPath, user: CurrentUser, session: SessionDep) -> SanityCheckOut:
    """The latest sanity check of this model: status, both results side by side and the reading."""
    model = _model_for(session, user, mid, Role.VIEWER)
    report = job_service.sanity_report(session, model)
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"model {mid} has no sanity check yet")
    return SanityCheckOut(**report)
