"""REST API v1: reading studies — coverage, the unsure and flagged readings managers review,
the disagreement list, adjudication (a revisioned label and map per image) and reader agreement."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Header, HTTPException, Query, Request, Response, UploadFile, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.api.images import read_upload
from app.deps import CurrentUser, ImageViewer, ProjectViewer, SessionDep, SettingsDep, StorageDep
from app.schemas import API, AnnotationOut, annotation_out
from app.services import adjudication as adjudication_service
from app.services import annotations as annotation_service
from app.services import model_versions as model_service
from app.services import reading
from app.services.errors import Forbidden
from app.tables import Project, ReadingStatus, User, as_utc

router = APIRouter(tags=["reading"])


class Coverage(BaseModel):
    readers_per_image: int = Field(description="k: readers wanted per image")
    images_by_readers: list[int] = Field(description="images with 0, 1, ... k (or more) readers")
    complete: int = Field(description="images with k readers")
    images: int
    blind: bool = Field(description="whether blind reading is in force")


class AttentionItem(BaseModel):
    image_id: int
    image_name: str
    annotation: AnnotationOut


@router.get("/projects/{pid}/coverage", response_model=Coverage)
def coverage(project: ProjectViewer, session: SessionDep) -> Coverage:
    """How many images have 0, 1, ... k readers (a skip is not a read)."""
    return Coverage(**reading.coverage(session, project), blind=project.blind)


@router.get(
    "/projects/{pid}/attention",
    response_model=list[AttentionItem],
    responses={403: {"description": "managers and adjudicators only"}},
)
def attention(
    project: ProjectViewer,
    user: CurrentUser,
    session: SessionDep,
    status: Annotated[
        list[Literal["unsure", "flagged", "skipped"]] | None,
        Query(description="default: unsure and flagged"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AttentionItem]:
    """The readings marked unsure or flagged for review, newest first, with their comments
    (managers and adjudicators)."""
    if not reading.is_privileged(session, project.id, user):
        raise Forbidden("only the project's managers and adjudicators see the readings that need attention")
    rows = reading.attention(session, project, statuses=status or ReadingStatus.NEEDS_COMMENT, limit=limit)
    return [
        AttentionItem(image_id=im.id, image_name=im.original_name, annotation=annotation_out(a, author))
        for a, author, im in rows
    ]


# --- adjudication ---------------------------------------------------------------------------------

ADJ_ERRORS = {
    403: {"description": "managers and adjudicators only (writes); blind reading (reads)"},
    409: {"description": "stale If-Match, or the label is not one of the project's labels"},
}


class Disagreement(BaseModel):
    image_id: int
    name: str
    readers: int
    labels: dict[str, int] = Field(description="readers per label ('' for a reading without a label)")
    label_disagreement: bool
    agreement_iou: float | None = Field(description="mean pairwise soft IoU of the readers' maps")
    adjudicated: bool
    adjudication_revision: int | None


class AdjudicationOut(BaseModel):
    id: int
    image_id: int
    label: str | None
    revision: int
    has_saliency: bool = Field(description="false: the label only was adjudicated; training keeps the mean")
    saliency_url: str | None
    author: str | None
    created_at: datetime
    updated_at: datetime


class AdjudicationRevisionOut(BaseModel):
    revision: int
    label: str | None
    has_saliency: bool
    saliency_url: str | None
    author_id: int | None
    created_at: datetime


class ReaderAgreement(BaseModel):
    images: int = Field(description="images both read (or read and adjudicated)")
    kappa: float | None = Field(description="Cohen's kappa of the labels")
    labelled: int = Field(description="images both labelled")
    iou: float | None = Field(description="mean soft IoU of the maps")
    maps: int = Field(description="images both painted")


class PairAgreement(ReaderAgreement):
    readers: list[str]


class VsAdjudication(ReaderAgreement):
    reader: str


class AgreementReport(BaseModel):
    pairs: list[PairAgreement]
    vs_adjudication: list[VsAdjudication]


def _adjudication_out(session, adj) -> AdjudicationOut:
    return AdjudicationOut(
        id=adj.id,
        image_id=adj.image_id,
        label=adj.label,
        revision=adj.revision,
        has_saliency=adj.saliency_key is not None,
        saliency_url=f"{API}/images/{adj.image_id}/adjudication/saliency.png?revision={adj.revision}"
        if adj.saliency_key
        else None,
        author=session.scalar(select(User.username).where(User.id == adj.author_id))
        if adj.author_id
        else None,
        created_at=as_utc(adj.created_at),
        updated_at=as_utc(adj.updated_at),
    )


@router.get(
    "/projects/{pid}/disagreements",
    response_model=list[Disagreement],
    responses={403: {"description": "managers and adjudicators only"}},
)
def list_disagreements(
    project: ProjectViewer,
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[Disagreement]:
    """Images with two or more readings, most disagreeing first: label disagreement first, then
    the lowest soft IoU between the readers' maps (managers and adjudicators)."""
    adjudication_service.check_adjudicator(session, project, user)
    return [
        Disagreement(**d)
        for d in adjudication_service.disagreements(session, project, limit=limit, offset=offset)
    ]


@router.get(
    "/projects/{pid}/reader-agreement",
    response_model=AgreementReport,
    responses={403: {"description": "blind reading: managers and adjudicators only"}},
)
def reader_agreement(
    project: ProjectViewer, user: CurrentUser, session: SessionDep, storage: StorageDep
) -> AgreementReport:
    """Agreement per reader pair and per reader against the adjudication: Cohen's kappa of the
    labels and the mean soft IoU of the maps. In a blind project, managers and adjudicators only."""
    if project.blind and not reading.is_privileged(session, project.id, user):
        raise Forbidden("blind reading: the readers' agreement is for managers and adjudicators")
    return AgreementReport(**adjudication_service.reader_agreement(session, storage, project))


@router.get("/images/{iid}/adjudication", response_model=AdjudicationOut, responses=ADJ_ERRORS)
def get_adjudication(
    image: ImageViewer, user: CurrentUser, session: SessionDep, response: Response
) -> AdjudicationOut:
    """The image's adjudication (404 when there is none); ETag is its revision."""
    reading.check_can_see_others(session, image, user)
    adj = adjudication_service.get_adjudication(session, image.id)
    if adj is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this image has not been adjudicated")
    response.headers["ETag"] = f'"{adj.revision}"'
    return _adjudication_out(session, adj)


@router.put(
    "/images/{iid}/adjudication",
    response_model=AdjudicationOut,
    responses={201: {"description": "the image's first adjudication"}, **ADJ_ERRORS},
)
def put_adjudication(
    request: Request,
    response: Response,
    image: ImageViewer,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    label: Annotated[str, Form(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]*$")],
    saliency: Annotated[
        UploadFile | None, File(description="8-bit grayscale PNG of the image's size")
    ] = None,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> AdjudicationOut:
    """Save the adjudicated label and map (managers and adjudicators): training uses this map
    instead of the readers' mean, and the label as the image's label. A new revision per save,
    `If-Match` as for annotations (409 when stale). No map (or an all-zero one): label only."""
    project = session.get(Project, image.project_id)
    png = (
        read_upload(saliency, settings.max_upload_bytes, "the adjudicated map")
        if saliency is not None
        else None
    )
    adj, created = adjudication_service.put_adjudication(
        session,
        storage,
        image,
        project,
        user,
        label=label or None,
        saliency_png=png,
        if_match=annotation_service.parse_if_match(if_match),
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["ETag"] = f'"{adj.revision}"'
    model_service.after_consensus_changed(session, request.app.state.celery, image.project_id, image.id)
    return _adjudication_out(session, adj)


@router.get(
    "/images/{iid}/adjudication/revisions", response_model=list[AdjudicationRevisionOut], responses=ADJ_ERRORS
)
def adjudication_revisions(
    image: ImageViewer, user: CurrentUser, session: SessionDep
) -> list[AdjudicationRevisionOut]:
    """Every revision of the image's adjudication, oldest first."""
    reading.check_can_see_others(session, image, user)
    adj = adjudication_service.get_adjudication(session, image.id)
    if adj is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this image has not been adjudicated")
    return [
        AdjudicationRevisionOut(
            revision=r.revision,
            label=r.label,
            has_saliency=r.saliency_key is not None,
            saliency_url=f"{API}/images/{image.id}/adjudication/saliency.png?revision={r.revision}"
            if r.saliency_key
            else None,
            author_id=r.author_id,
            created_at=as_utc(r.created_at),
        )
        for r in adjudication_service.list_revisions(session, adj)
    ]


@router.get(
    "/images/{iid}/adjudication/saliency.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "an 8-bit grayscale PNG"}, **ADJ_ERRORS},
)
def adjudication_png(
    image: ImageViewer,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    revision: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="default: the current one")] = None,
) -> Response:
    """The adjudicated map, of the current or an earlier revision; 404 when it has none."""
    reading.check_can_see_others(session, image, user)
    adj = adjudication_service.get_adjudication(session, image.id)
    key = adj.saliency_key if adj else None
    if adj is not None and revision is not None:
        rev = next(
            (r for r in adjudication_service.list_revisions(session, adj) if r.revision == revision), None
        )
        if rev is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no revision {revision}")
        key = rev.saliency_key
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no adjudicated map for this image")
    return Response(
        storage.read_bytes(key),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=31536000, immutable" if revision else "no-cache"},
    )
