"""REST API v1: project images (upload, list, read, file, change, delete)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from app.deps import (
    CurrentUser,
    ImageManager,
    ImageViewer,
    ProjectAnnotator,
    ProjectViewer,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.imaging import media_type
from app.schemas import ImageOut, ImagePage, ImageUpdate, UploadedImage, UploadResult, image_out
from app.services import images as image_service
from app.services.errors import TooLarge
from app.storage import CHUNK, LocalStorage

router = APIRouter(tags=["images"])

NoControl = r"^[^\x00-\x1f]*$"


def check_content_length(request: Request, limit: int) -> None:
    """Refuse an oversized body from its Content-Length, before it is spooled to disk."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise TooLarge(f"the request is {int(length):,} bytes, over the limit of {limit:,}")


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
    responses={200: {"description": "every file was already in the project"}},
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
) -> UploadResult:
    """Upload images (annotators and managers), all or nothing: every file is checked first
    (413 too large, 415 not PNG/JPEG/TIFF/BMP by content, 422 corrupt/truncated/too many pixels,
    422 unknown label). Bytes already in the project answer their existing row (`created: false`)."""
    check_content_length(request, settings.max_import_bytes)
    uploads = list(files or []) + ([file] if file is not None else [])
    payload = [
        image_service.UploadedFile(
            u.filename or "", read_upload(u, settings.max_upload_bytes, f"file {u.filename!r}")
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
        max_pixels=settings.max_image_pixels,
    )
    created = sum(1 for _, c in results if c)
    if not created:
        response.status_code = status.HTTP_200_OK
    return UploadResult(
        images=[UploadedImage(**image_out(img).model_dump(), created=c) for img, c in results],
        created=created,
        existing=len(results) - created,
    )


@router.get("/projects/{pid}/images", response_model=ImagePage)
def list_images(
    project: ProjectViewer,
    user: CurrentUser,
    session: SessionDep,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    labelled: bool | None = None,
    annotated: Annotated[bool | None, Query(description="has at least one annotation")] = None,
    split: Literal["train", "val", "test"] | None = None,
    annotated_by_me: bool | None = None,
    label: Annotated[str | None, Query(max_length=100, pattern=NoControl)] = None,
) -> ImagePage:
    """The project's images in upload order, one page at a time (keyset pagination)."""
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
    )
    return ImagePage(items=[image_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/images/{iid}", response_model=ImageOut)
def get_image(image: ImageViewer) -> ImageOut:
    return image_out(image)


@router.get(
    "/images/{iid}/file",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {}, "image/bmp": {}}},
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


@router.patch("/images/{iid}", response_model=ImageOut)
def update_image(body: ImageUpdate, image: ImageManager, session: SessionDep) -> ImageOut:
    """Move an image to another split or change its import label (managers)."""
    image_service.set_image_fields(
        session,
        image,
        split=body.split,
        import_label=body.import_label,
        clear_import_label=body.clear_import_label,
    )
    return image_out(image)


@router.delete("/images/{iid}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(image: ImageManager, session: SessionDep, storage: StorageDep) -> Response:
    """Delete an image with its annotations (managers); its file goes once nothing uses it."""
    image_service.delete_image(session, storage, image)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
