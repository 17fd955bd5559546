"""REST API v1: project images (upload, list, read, file, change, delete)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from sqlalchemy import select

from app.deps import (
    CurrentUser,
    ImageManager,
    ImageViewer,
    ProjectAnnotator,
    ProjectManager,
    ProjectViewer,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.imaging import media_type
from app.schemas import (
    BulkAction,
    BulkResult,
    ImageOut,
    ImagePage,
    ImageUpdate,
    UploadedImage,
    UploadResult,
)
from app.services import browse, reading
from app.services import images as image_service
from app.services import model_versions as model_service
from app.services.errors import Forbidden, TooLarge
from app.storage import CHUNK, LocalStorage
from app.tables import Project, ReadingStatus, User

router = APIRouter(tags=["images"])

NoControl = r"^[^\x00-\x1f]*$"


def check_content_length(request: Request, limit: int) -> None:
    """Refuse an oversized body from its Content-Length, before it is spooled to disk."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise TooLarge(f"the request is {int(length):,} bytes, over the limit of {limit:,}")


def spooled(upload: UploadFile, limit: int, what: str):
    """The upload's file object after checking its size (413 when over `limit`)."""
    size = upload.size
    if size is None:
        upload.file.seek(0, 2)
        size = upload.file.tell()
    if size > limit:
        raise TooLarge(f"{what} is {size:,} bytes, over the limit of {limit:,}; make it smaller")
    return upload.file


def read_upload(upload: UploadFile, limit: int, what: str) -> bytes:
    """An uploaded file's bytes, or 413 when it is over `limit`."""
    if upload.size is not None and upload.size > limit:
        raise TooLarge(f"{what} is {upload.size:,} bytes, over the limit of {limit:,}; make it smaller")
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{what} is over the limit of {limit:,} bytes; make it smaller")
    return data


@router.post(
    "/projects/{pid}/images",
    response_model=UploadResult,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "every file was already in the project"},
        409: {"description": "the label is not one of the project's labels"},
    },
)
def upload_images(
    request: Request,
    response: Response,
    project: ProjectAnnotator,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile] | None, File(description="one or more images")] = None,
    file: Annotated[UploadFile | None, File(description="a single image (alternative to files)")] = None,
    label: Annotated[str | None, Form(max_length=100, pattern=NoControl)] = None,
    split: Annotated[Literal["train", "val", "test", ""] | None, Form()] = None,
    group: Annotated[
        str | None,
        Form(max_length=100, pattern=NoControl, description="patient, subject or device of every file"),
    ] = None,
    subtype: Annotated[
        str | None,
        Form(max_length=100, pattern=NoControl, description="subtype of every file, e.g. an attack type"),
    ] = None,
) -> UploadResult:
    """Upload images (annotators and managers), all or nothing: every file is checked first
    (413 too large, 415 not PNG/JPEG/TIFF/BMP/DICOM by content, 422 corrupt/truncated/too many pixels,
    409 unknown label). Bytes already in the project answer their existing row (`created: false`)."""
    check_content_length(request, settings.max_import_bytes)
    uploads = list(files or []) + ([file] if file is not None else [])
    # Starlette spooled each file to disk as it streamed (over 1 MiB); the service reads one at a time.
    payload = [
        image_service.UploadedFile(
            u.filename or "", source=spooled(u, settings.max_upload_bytes, f"file {u.filename!r}")
        )
        for u in uploads
    ]
    results = image_service.upload_images(
        session,
        storage,
        project,
        user,
        payload,
        label=label or None,
        split=split or None,
        group=(group or "").strip() or None,
        subtype=(subtype or "").strip() or None,
        max_pixels=settings.max_image_pixels,
    )
    created = sum(1 for _, c in results if c)
    if not created:
        response.status_code = status.HTTP_200_OK
    else:
        model_service.after_images_added(session, request.app.state.celery, project.id)
    return UploadResult(
        images=[UploadedImage.from_row(img, created=c) for img, c in results],
        created=created,
        existing=len(results) - created,
    )


@router.get(
    "/projects/{pid}/images",
    response_model=ImagePage,
    responses={403: {"description": "blind reading: filters on others' work are for managers"}},
)
def list_images(
    project: ProjectViewer,
    user: CurrentUser,
    session: SessionDep,
    cursor: Annotated[
        str | None,
        Query(
            pattern=image_service.CURSOR_PATTERN,
            description="`next_cursor` of the previous page (the last id it listed)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    labelled: bool | None = None,
    annotated: Annotated[bool | None, Query(description="has at least one annotation")] = None,
    split: Literal["train", "val", "test"] | None = None,
    annotated_by_me: bool | None = None,
    label: Annotated[str | None, Query(max_length=100, pattern=NoControl)] = None,
    reader: Annotated[
        str | None, Query(max_length=64, pattern=NoControl, description="read by this username")
    ] = None,
    reading_status: Annotated[
        ReadingStatus | None,
        Query(alias="status", description="has a reading with this status"),
    ] = None,
    label_disagreement: Annotated[bool | None, Query(description="its readers' labels differ")] = None,
    max_agreement: Annotated[
        float | None, Query(ge=0, le=1, description="map agreement (soft IoU) at most")
    ] = None,
    prediction: Annotated[
        Literal["correct", "wrong"] | None, Query(description="the active model's prediction vs the label")
    ] = None,
    min_uncertainty: Annotated[
        float | None, Query(ge=0, le=1, description="prediction uncertainty at least")
    ] = None,
) -> ImagePage:
    """The project's images in upload order, one page at a time (keyset pagination), with the
    image browser's filters. In a blind project, filters on other readers' work (reader, status,
    disagreement, agreement) are for managers and adjudicators (403)."""
    privileged = reading.is_privileged(session, project.id, user)
    by_others = (reader is not None and reader != user.username) or any(
        v is not None for v in (reading_status, label_disagreement, max_agreement)
    )
    if project.blind and by_others and not privileged:
        raise Forbidden("blind reading: filters on other readers' work are for managers and adjudicators")
    reader_id = None
    if reader is not None:
        reader_id = session.scalar(select(User.id).where(User.username == reader))
        if reader_id is None:
            return ImagePage(items=[], next_cursor=None)
    rows, next_cursor = image_service.list_images(
        session,
        project,
        user,
        cursor=cursor,
        limit=limit,
        labelled=labelled,
        annotated=annotated,
        split=split,
        annotated_by_me=annotated_by_me,
        label=label,
        blind=project.blind and not privileged,
        reader_id=reader_id,
        status=reading_status,
        label_disagreement=label_disagreement,
        max_agreement=max_agreement,
        prediction=prediction,
        min_uncertainty=min_uncertainty,
    )
    hidden = reading.hidden_image_ids(session, project, user, [r.id for r in rows])
    items = [ImageOut.model_validate(r) for r in rows]
    items = [reading.redact_image(out) if out.id in hidden else out for out in items]
    return ImagePage(items=items, next_cursor=next_cursor)


@router.get("/images/{iid}", response_model=ImageOut)
def get_image(image: ImageViewer, user: CurrentUser, session: SessionDep) -> ImageOut:
    """The image's facts; a blind reader who has not read it sees its import label and no agreement."""
    project = session.get(Project, image.project_id)
    out = ImageOut.model_validate(image)
    return reading.redact_image(out) if reading.hidden_image_ids(session, project, user, [image.id]) else out


@router.get(
    "/images/{iid}/file",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "image/png": {},
                "image/jpeg": {},
                "image/tiff": {},
                "image/bmp": {},
                "application/dicom": {},
            }
        },
        307: {"description": "S3 storage with SAGE_S3_PRESIGNED_DOWNLOADS: a short-lived presigned URL"},
        404: {"description": "no such image, or its file is missing from storage"},
    },
)
def image_file(image: ImageViewer, storage: StorageDep, settings: SettingsDep) -> Response:
    """The image's bytes exactly as uploaded, with their content type.

    With S3 storage and SAGE_S3_PRESIGNED_DOWNLOADS the answer is a redirect to a presigned URL of
    the bucket that expires after SAGE_S3_PRESIGN_TTL_S (issued only after the viewer check);
    otherwise the bytes are streamed through this process."""
    kind = media_type(image.format)
    headers = {
        "Cache-Control": "private, max-age=31536000, immutable",
        "ETag": f'"{image.sha256}"',
        "X-Content-Type-Options": "nosniff",
    }
    if settings.s3_presigned_downloads:
        url = storage.presigned_url(image.storage_key, content_type=kind)
        if url is not None:
            return RedirectResponse(
                url, status.HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"}
            )
    if isinstance(storage, LocalStorage):
        path = storage.path(image.storage_key)
        if not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="the image's file is missing from storage")
        return FileResponse(path, media_type=kind, headers=headers)
    try:
        stream = storage.open(image.storage_key)
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail="the image's file is missing from storage"
        ) from None

    def chunks():
        with stream:
            while chunk := stream.read(CHUNK):
                yield chunk

    return StreamingResponse(chunks(), media_type=kind, headers=headers)


@router.get(
    "/images/{iid}/display.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "8-bit PNG at the image's full size"},
        304: {"description": "the rendering named in If-None-Match has not changed"},
        422: {"description": "a center, width or invert out of range"},
        503: {"description": "too many renders at once; retry after Retry-After"},
    },
)
async def display_png(
    request: Request,
    image: ImageViewer,
    session: SessionDep,
    storage: StorageDep,
    center: Annotated[float | None, Query(allow_inf_nan=False, ge=-1e12, le=1e12)] = None,
    width: Annotated[float | None, Query(allow_inf_nan=False, gt=0, le=1e12)] = None,
    invert: Annotated[int, Query(ge=0, le=1, description="1 shows the image inverted")] = 0,
) -> Response:
    """The image through a display window (`center`, `width` in the stored pixel values, DICOM's
    linear function) as an 8-bit PNG of the image's size; without them, the image's default
    window (the file's own window, else the 0.5 to 99.5 percentile range, else 8-bit full range);
    with only one of them, the other comes from the default window.
    Cached by the browser per (image content, window): the ETag names both. Renders run a bounded
    number at a time (503 with Retry-After when the server stays busy)."""
    data, (c, w) = await request.app.state.render_limiter.run(
        image_service.display_png, session, storage, image, center, width, bool(invert)
    )
    etag = f'"{image.sha256}-{c:.6g}-{w:.6g}-{invert}"'
    explicit = center is not None and width is not None
    headers = {
        "ETag": etag,
        "Cache-Control": "private, max-age=31536000, immutable" if explicit else "private, max-age=300",
        "X-Window-Center": f"{c:.6g}",
        "X-Window-Width": f"{w:.6g}",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(data, media_type="image/png", headers=headers)


@router.patch(
    "/images/{iid}",
    response_model=ImageOut,
    responses={409: {"description": "the import label is not one of the project's labels"}},
)
def update_image(body: ImageUpdate, image: ImageManager, session: SessionDep) -> ImageOut:
    """Move an image to another split or change its import label (managers)."""
    image_service.set_image_fields(
        session,
        image,
        split=body.split,
        import_label=body.import_label,
        clear_import_label=body.clear_import_label,
    )
    return ImageOut.model_validate(image)


@router.delete("/images/{iid}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(image: ImageManager, session: SessionDep, storage: StorageDep) -> Response:
    """Delete an image with its annotations (managers); its file goes once nothing uses it."""
    image_service.delete_image(session, storage, image)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- bulk actions of the image browser (issue 12) ---------------------------------------------------


@router.post(
    "/projects/{pid}/images/bulk",
    response_model=BulkResult,
    responses={
        409: {"description": "the label is not one of the project's labels"},
        422: {"description": "unknown action or split; no ids; more than 1000 ids"},
    },
)
def bulk_images(
    body: BulkAction, project: ProjectManager, session: SessionDep, storage: StorageDep
) -> BulkResult:
    """One action on many images (managers): set_split, set_label (the import label; empty clears
    it), delete, or requeue (the image wants one reader more, so `next` offers it again)."""
    return BulkResult(
        **browse.bulk_action(
            session, storage, project, body.image_ids, body.action, split=body.split, label=body.label
        )
    )
