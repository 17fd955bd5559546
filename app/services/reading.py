"""Reading studies: k readers per image, blind reading, coverage and the managers' attention list.

Blind reading (`Project.blind`): until a reader has saved their own reading of an image (any
status but `skipped`), every route that shows another reader's work on it answers 403: the
image's annotation list and consensus map, another reader's revisions and maps, the review page,
and the dataset export. The image's derived label and agreement are replaced by the import label
and none in what the reader is shown, and so are a stored prediction's alignment with the
consensus map and its image label (`redact_prediction`). Site admins, the project's managers and members with the
`adjudicator` flag see everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.services.errors import Forbidden
from app.tables import Annotation, Image, Project, ProjectMember, ReadingStatus, Role, User

BLIND_DETAIL = (
    "blind reading: other readers' labels and maps of this image stay hidden until you have saved "
    "your own reading of it"
)


def is_privileged(session: Session, project_id: int, user: User) -> bool:
    """Site admins, the project's managers and its adjudicators see every reader's work."""
    if user.is_admin:
        return True
    row = session.execute(
        select(ProjectMember.role, ProjectMember.adjudicator).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user.id
        )
    ).first()
    return row is not None and (row[0] == Role.MANAGER or bool(row[1]))


def read_image_ids(session: Session, user: User, image_ids: Iterable[int]) -> set[int]:
    """Those of `image_ids` the user has read (saved with any status but skipped)."""
    ids = list(image_ids)
    if not ids:
        return set()
    return set(
        session.scalars(
            select(Annotation.image_id).where(
                Annotation.author_id == user.id,
                Annotation.image_id.in_(ids),
                Annotation.status != ReadingStatus.SKIPPED,
            )
        )
    )


def hidden_image_ids(session: Session, project: Project, user: User, image_ids: Iterable[int]) -> set[int]:
    """Those of `image_ids` whose other readers' work the user may not see yet (blind reading)."""
    ids = set(image_ids)
    if not ids or not project.blind or is_privileged(session, project.id, user):
        return set()
    return ids - read_image_ids(session, user, ids)


def can_see_others(session: Session, project: Project, image: Image, user: User) -> bool:
    return not hidden_image_ids(session, project, user, [image.id])


def check_can_see_others(session: Session, image: Image, user: User) -> None:
    """Raise Forbidden (403) while blind reading hides other readers' work on the image from the user."""
    project = session.get_one(Project, image.project_id)
    if not can_see_others(session, project, image, user):
        raise Forbidden(BLIND_DETAIL)


def check_can_export(session: Session, project: Project, user: User) -> None:
    """In a blind project only managers and adjudicators may export (the export holds every reading)."""
    if project.blind and not is_privileged(session, project.id, user):
        raise Forbidden(
            "blind reading: the export holds every reader's labels and maps, so only managers and "
            "adjudicators may download it"
        )


def redact_image(out: Any) -> Any:
    """An ImageOut as a blind reader may see it: the import label instead of the readers' majority,
    no agreement."""
    out.label = out.import_label
    out.agreement.iou = None
    out.agreement.pearson = None
    return out


def redact_prediction(out: Any, import_label: str | None) -> Any:
    """A StoredPrediction as a blind reader may see it before reading the image: no alignment (it
    compares the model's heatmap with the other readers' consensus map), and the import label
    instead of the readers' majority."""
    out.alignment = None
    out.alignment_detail = {}
    out.alignment_hidden = True
    out.image_label = import_label
    return out


def coverage(session: Session, project: Project) -> dict[str, Any]:
    """How many images have 0, 1, ... k readers (the last bucket: k or more), and k."""
    k = max(1, project.readers_per_image or 1)
    counts = [0] * (k + 1)
    for n, total in session.execute(
        select(Image.annotation_count, func.count(Image.id))
        .where(Image.project_id == project.id)
        .group_by(Image.annotation_count)
    ):
        counts[min(int(n or 0), k)] += total
    return {"readers_per_image": k, "images_by_readers": counts, "complete": counts[k], "images": sum(counts)}


def study_context(session: Session, project: Project, privileged: bool) -> dict[str, Any]:
    """The project page's reading-study facts: coverage for everyone; the unsure and flagged
    readings (`attention`) for the `privileged` (managers and adjudicators)."""
    return {
        "coverage": coverage(session, project),
        "blind": project.blind,
        "privileged": privileged,
        "attention": attention(session, project) if privileged else [],
    }


def attention(
    session: Session,
    project: Project,
    *,
    statuses: Iterable[str] = ReadingStatus.NEEDS_COMMENT,
    limit: int = 200,
) -> list[tuple[Annotation, str, Image]]:
    """The project's annotations marked unsure or flagged (or `statuses`), newest first, with the
    reader's name and the image: what a manager should look at."""
    return [
        (a, name, im)
        for a, name, im in session.execute(
            select(Annotation, User.username, Image)
            .join(User, User.id == Annotation.author_id)
            .join(Image, Image.id == Annotation.image_id)
            .where(Annotation.project_id == project.id, Annotation.status.in_(list(statuses)))
            .order_by(Annotation.updated_at.desc(), Annotation.id.desc())
            .limit(limit)
        )
    ]
