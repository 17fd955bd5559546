"""REST API v1: reading studies — coverage and the unsure and flagged readings managers review."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.deps import CurrentUser, ProjectViewer, SessionDep
from app.schemas import AnnotationOut, annotation_out
from app.services import reading
from app.services.errors import Forbidden

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
    rows = reading.attention(session, project, statuses=status or ("unsure", "flagged"), limit=limit)
    return [
        AttentionItem(image_id=im.id, image_name=im.original_name, annotation=annotation_out(a, author))
        for a, author, im in rows
    ]
