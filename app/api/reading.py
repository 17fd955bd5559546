"""REST API v1: reading studies — coverage, the unsure and flagged readings managers review,
the disagreement list, adjudication (a revisioned label and map per image) and reader agreement."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Header, HTTPException, Query, Request, Response, UploadFile, status

from app.api.images import read_upload
from app.deps import CurrentUser, ImageViewer, ProjectViewer, SessionDep, SettingsDep, StorageDep
from app.schemas import (
    AdjudicationOut,
    AdjudicationRevisionOut,
    AgreementReport,
    AnnotationOut,
    AttentionItem,
    Coverage,
    Disagreement,
)
from app.services import adjudication as adjudication_service
from app.services import annotations as annotation_service
from app.services import model_versions as model_service
from app.services import reading
from app.services.errors import Forbidden
from app.tables import Project, ReadingStatus

router = APIRouter(tags=["reading"])


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
        AttentionItem.from_row(im, annotation=AnnotationOut.from_row(a, author=author))
        for a, author, im in rows
    ]


# --- adjudication ---------------------------------------------------------------------------------

ADJ_ERRORS = {
    403: {"description": "managers and adjudicators only (writes); blind reading (reads)"},
    409: {"description": "stale If-Match, or the label is not one of the project's labels"},
}


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
    return AdjudicationOut.from_row(adj, author=adjudication_service.author_name(session, adj))


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
    return AdjudicationOut.from_row(adj, author=adjudication_service.author_name(session, adj))


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
        AdjudicationRevisionOut.from_row(r, image_id=image.id)
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
