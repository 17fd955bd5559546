"""REST API v1: annotations (optimistic PUT with If-Match), their history, consensus and agreement."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, HTTPException, Query, Request, Response, UploadFile, status
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.api.images import NoControl, read_upload
from app.deps import (
    AnnotationViewer,
    CurrentUser,
    ImageAnnotator,
    ImageViewer,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.schemas import AnnotationOut, ImageAnnotations, RevisionOut
from app.services import annotations as annotation_service
from app.services import model_versions as model_service
from app.services import reading
from app.tables import Image, Project, ReadingStatus, User

router = APIRouter(tags=["annotations"])

PNG = {"content": {"image/png": {}}, "description": "an 8-bit grayscale PNG"}
BLIND = {403: {"description": "blind reading: save your own reading of the image first"}}


def _check_blind_for(session, annotation, user) -> None:
    """Another reader's annotation is hidden from a blind reader who has not read the image yet."""
    if annotation.author_id != user.id:
        image = session.get(Image, annotation.image_id)
        reading.check_can_see_others(session, image, user)


@router.put(
    "/images/{iid}/annotation",
    response_model=AnnotationOut,
    responses={
        201: {"description": "your first annotation of this image"},
        409: {"description": "stale If-Match, or the label is not one of the project's labels"},
    },
)
def put_annotation(
    request: Request,
    response: Response,
    image: ImageAnnotator,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    label: Annotated[str | None, Form(max_length=100, pattern=NoControl)] = None,
    saliency: Annotated[
        UploadFile | None, File(description="8-bit grayscale PNG of the image's size")
    ] = None,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
    status_: Annotated[
        ReadingStatus,
        Form(alias="status", description="skipped: no label or map, the image comes back later"),
    ] = ReadingStatus.DONE,
    comment: Annotated[
        str | None, Form(max_length=2000, description="why unsure or flagged (required for those)")
    ] = None,
) -> AnnotationOut:
    """Store your label, saliency map and status for this image as a new revision (annotators, managers).

    Send `If-Match: <revision>` with the revision you last saw; omit it only for your first
    annotation of the image. A stale revision answers 409 and changes nothing; every revision
    is kept. The whole annotation is replaced: send both label and map. No map (omitted, or a map
    that is zero everywhere) means "label only": nothing is stored for it, and training and the
    consensus ignore it. 409 for an unknown label, 422 for a map that is not an 8-bit grayscale PNG of the
    image's size, `unsure`/`flagged` without a comment, or a skip that carries a label or map."""
    project = session.get(Project, image.project_id)
    png = (
        read_upload(saliency, settings.max_upload_bytes, "the saliency map") if saliency is not None else None
    )
    annotation, created = annotation_service.put_annotation(
        session,
        storage,
        image,
        project,
        user,
        label=label or None,
        saliency_png=png,
        if_match=annotation_service.parse_if_match(if_match),
        status=status_,
        comment=comment,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["ETag"] = f'"{annotation.revision}"'
    model_service.after_consensus_changed(session, request.app.state.celery, image.project_id, image.id)
    return AnnotationOut.from_row(annotation, author=user.username)


@router.get("/images/{iid}/annotation", response_model=AnnotationOut)
def get_my_annotation(
    image: ImageViewer, user: CurrentUser, session: SessionDep, response: Response
) -> AnnotationOut:
    """Your current annotation of this image (404 when you have none); ETag is its revision."""
    for a in annotation_service.list_annotations(session, image):
        if a.author_id == user.id:
            response.headers["ETag"] = f'"{a.revision}"'
            return AnnotationOut.from_row(a, author=user.username)
    raise HTTPException(status.HTTP_404_NOT_FOUND, detail="you have not annotated this image yet")


@router.get("/images/{iid}/annotations", response_model=ImageAnnotations, responses=BLIND)
def list_annotations(image: ImageViewer, user: CurrentUser, session: SessionDep) -> ImageAnnotations:
    """Every annotator's current annotation, the consensus map's availability and their agreement.
    `has_saliency: false` is a label-only reading (no map); it is not part of the consensus."""
    reading.check_can_see_others(session, image, user)
    annotations = annotation_service.list_annotations(session, image)
    ids = {a.author_id for a in annotations}
    names = {
        uid: name for uid, name in session.execute(select(User.id, User.username).where(User.id.in_(ids)))
    }
    return ImageAnnotations.from_row(
        image, annotations=[AnnotationOut.from_row(a, author=names.get(a.author_id, "")) for a in annotations]
    )


@router.get(
    "/images/{iid}/saliency.png",
    response_class=Response,
    responses={200: PNG, 503: {"description": "too many renders at once; retry after Retry-After"}, **BLIND},
)
async def consensus_png(
    request: Request, image: ImageViewer, user: CurrentUser, session: SessionDep, storage: StorageDep
) -> Response:
    """The consensus saliency map (mean of the annotators' maps, else the imported map); 404 if none.
    Computed a bounded number at a time (503 with Retry-After when the server stays busy)."""
    await run_in_threadpool(reading.check_can_see_others, session, image, user)
    png = await request.app.state.render_limiter.run(
        annotation_service.consensus_png, session, storage, image
    )
    if png is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no saliency map for this image yet")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-cache"})


@router.get("/annotations/{aid}/revisions", response_model=list[RevisionOut], responses=BLIND)
def list_revisions(annotation: AnnotationViewer, user: CurrentUser, session: SessionDep) -> list[RevisionOut]:
    """Every revision of an annotation, oldest first."""
    _check_blind_for(session, annotation, user)
    return [RevisionOut.model_validate(r) for r in annotation_service.list_revisions(session, annotation)]


@router.get("/annotations/{aid}/saliency.png", response_class=Response, responses={200: PNG, **BLIND})
def annotation_png(
    annotation: AnnotationViewer,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    revision: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="default: the current one")] = None,
) -> Response:
    """One annotator's saliency map, of the current or an earlier revision."""
    _check_blind_for(session, annotation, user)
    key = annotation.saliency_key
    if revision is not None:
        rev = annotation_service.get_revision(session, annotation, revision)
        if rev is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no revision {revision}")
        key = rev.saliency_key
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this revision has no saliency map")
    return Response(
        storage.read_bytes(key),
        media_type="image/png",
        # A named revision never changes; "the current one" changes with every save.
        headers={
            "Cache-Control": "private, max-age=31536000, immutable" if revision is not None else "no-cache"
        },
    )
