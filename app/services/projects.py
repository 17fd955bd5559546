"""Projects, their members and their summary counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.services.errors import Conflict, Invalid, NotFound
from app.services.images import delete_unreferenced
from app.services.lookups import active_models
from app.services.users import get_by_username
from app.storage import Storage
from app.tables import Annotation, AnnotationRevision, Image, ModelVersion, Project, ProjectMember, Role, User

PROJECT_FIELDS = (
    "name",
    "description",
    "labels",
    "backbone",
    "image_size",
    "training",
    "retrain_enabled",
    "retrain_min_new",
    "activation_policy",
    "next_policy",
    "readers_per_image",
    "blind_mode",
    "retired_labels",
)


def _name_taken(session: Session, name: str, exclude_id: int | None = None) -> bool:
    q = select(Project.id).where(func.lower(Project.name) == name.lower())
    if exclude_id is not None:
        q = q.where(Project.id != exclude_id)
    return session.scalar(q) is not None


def create_project(session: Session, owner: User | None, **fields: Any) -> Project:
    """Create a project (commits); `owner` becomes its manager. Raises Conflict on a taken name."""
    unknown = set(fields) - set(PROJECT_FIELDS)
    if unknown:
        raise Invalid(f"unknown project fields: {sorted(unknown)}")
    if fields.get("image_size") is None:  # by backbone (sage.config is torch-free)
        from sage.config import default_image_size

        fields["image_size"] = default_image_size(fields.get("backbone") or "tiny")
    name = fields["name"]
    if _name_taken(session, name):
        raise Conflict(f"a project named {name!r} already exists; choose another name")
    project = Project(created_by_id=owner.id if owner else None, **fields)
    session.add(project)
    try:
        session.flush()
        if owner is not None:
            session.add(ProjectMember(project_id=project.id, user_id=owner.id, role=Role.MANAGER))
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a project named {name!r} already exists; choose another name") from None
    return project


def labels_in_use(session: Session, project: Project, labels: list[str]) -> dict[str, int]:
    """For each label, how many annotations and import labels of the project use it (only used ones)."""
    used: dict[str, int] = {}
    for label, n in session.execute(
        select(Annotation.label, func.count())
        .where(Annotation.project_id == project.id, Annotation.label.in_(labels))
        .group_by(Annotation.label)
    ):
        if label is not None:
            used[label] = used.get(label, 0) + n
    for label, n in session.execute(
        select(Image.import_label, func.count())
        .where(Image.project_id == project.id, Image.import_label.in_(labels))
        .group_by(Image.import_label)
    ):
        if label is not None:
            used[label] = used.get(label, 0) + n
    return used


def update_project(session: Session, project: Project, **fields: Any) -> Project:
    """Change settings (commits). Labels may be added or reordered; removing one still in use is a Conflict."""
    if "name" in fields and _name_taken(session, fields["name"], exclude_id=project.id):
        raise Conflict(f"a project named {fields['name']!r} already exists; choose another name")
    if "labels" in fields:
        removed = [label for label in project.labels if label not in fields["labels"]]
        used = labels_in_use(session, project, removed) if removed else {}
        if used:
            raise Conflict(
                f"labels still in use cannot be removed: {used} (annotations and import labels); "
                "relabel those images first"
            )
    if "retired_labels" in fields or "labels" in fields:
        labels = fields.get("labels", project.labels)
        retired = fields.get("retired_labels", project.retired_labels or [])
        unknown = [label for label in retired if label not in labels]
        if "retired_labels" in fields and unknown:
            raise Invalid(f"cannot retire labels the project does not have: {unknown}")
        fields["retired_labels"] = [label for label in labels if label in retired]
    for key, value in fields.items():
        if key not in PROJECT_FIELDS:
            raise Invalid(f"unknown project field {key!r}")
        setattr(project, key, value)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("a project with this name already exists; choose another name") from None
    return project


def delete_project(session: Session, storage: Storage, project: Project) -> None:
    """Delete the project with its images, annotations, runs and models (commits), then the files
    no other row uses."""
    keys = set(session.scalars(select(Image.storage_key).where(Image.project_id == project.id)))
    keys |= set(
        session.scalars(
            select(Image.import_saliency_key).where(
                Image.project_id == project.id, Image.import_saliency_key.is_not(None)
            )
        )
    )
    keys |= set(
        session.scalars(
            select(AnnotationRevision.saliency_key)
            .join(Annotation, Annotation.id == AnnotationRevision.annotation_id)
            .where(Annotation.project_id == project.id, AnnotationRevision.saliency_key.is_not(None))
        )
    )
    session.execute(delete(Project).where(Project.id == project.id))
    session.commit()
    delete_unreferenced(session, storage, keys)


def visible_projects(session: Session, user: User, *, by_name: bool = False) -> list[tuple[Project, str]]:
    """Projects the user may see with the user's role (site admins: all, as manager), in id order
    or, `by_name`, in name order; one query."""
    order = Project.name if by_name else Project.id
    if user.is_admin:
        return [(p, Role.MANAGER) for p in session.scalars(select(Project).order_by(order))]
    rows = session.execute(
        select(Project, ProjectMember.role)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .where(ProjectMember.user_id == user.id)
        .order_by(order)
    )
    return [(p, role) for p, role in rows]


def summaries(
    session: Session, project_ids: Sequence[int], user: User | None = None
) -> dict[int, dict[str, Any]]:
    """For each project: images, labelled images, images read by at least one reader, readings,
    images per label and the readers' mean agreement (the API's `ProjectSummary`); with `user`, also
    `mine`, the user's readings. Grouped queries on the images' denormalised columns (index-only at
    100k images), as many whatever the number of projects: two, three with `user`."""
    out: dict[int, dict[str, Any]] = {
        pid: {
            "images": 0,
            "labelled": 0,
            "annotated": 0,
            "annotations": 0,
            "labels": {},
            "agreement": {"iou": None, "pearson": None, "images": 0},
        }
        for pid in project_ids
    }
    if not project_ids:
        return out
    for pid, n, labelled, annotated, n_ann, iou, r, n_agree in session.execute(
        select(
            Image.project_id,
            func.count(),
            func.count(Image.label),
            func.count().filter(Image.annotation_count > 0),
            func.coalesce(func.sum(Image.annotation_count), 0),
            func.avg(Image.agreement_iou),
            func.avg(Image.agreement_r),
            func.count(Image.agreement_iou),
        )
        .where(Image.project_id.in_(project_ids))
        .group_by(Image.project_id)
    ):
        s = out[pid]
        s.update(images=n, labelled=labelled, annotated=annotated, annotations=int(n_ann))
        s["agreement"] = {
            "iou": float(iou) if iou is not None else None,
            "pearson": float(r) if r is not None else None,
            "images": n_agree,
        }
    for pid, label, n in session.execute(
        select(Image.project_id, Image.label, func.count())
        .where(Image.project_id.in_(project_ids), Image.label.is_not(None))
        .group_by(Image.project_id, Image.label)
    ):
        out[pid]["labels"][label] = n
    if user is not None:
        for summary in out.values():
            summary["mine"] = 0
        for pid, mine in session.execute(
            select(Annotation.project_id, func.count(Annotation.id))
            .where(Annotation.project_id.in_(project_ids), Annotation.author_id == user.id)
            .group_by(Annotation.project_id)
        ):
            out[pid]["mine"] = mine
    return out


def project_counts(session: Session, project_id: int, user: User | None = None) -> dict[str, Any]:
    """The summary of one project (see `summaries`)."""
    return summaries(session, [project_id], user)[project_id]


@dataclass
class ProjectCard:
    """A project as the projects page lists it: the caller's role, its counts and its active model."""

    project: Project
    role: str
    counts: dict[str, Any]
    model: ModelVersion | None


def project_cards(session: Session, user: User) -> list[ProjectCard]:
    """The projects the user may see, by name, each with the user's role, summary (`summaries`)
    and active model: five queries whatever the number of projects."""
    visible = visible_projects(session, user, by_name=True)
    ids = [project.id for project, _ in visible]
    counts = summaries(session, ids, user)
    models = active_models(session, ids)
    return [
        ProjectCard(project, role, counts[project.id], models.get(project.id)) for project, role in visible
    ]


# --- members -------------------------------------------------------------------------------------


def list_members(session: Session, project: Project) -> list[tuple[ProjectMember, User]]:
    return list(
        session.execute(
            select(ProjectMember, User)
            .join(User, User.id == ProjectMember.user_id)
            .where(ProjectMember.project_id == project.id)
            .order_by(User.username)
        )
    )


def _managers(session: Session, project: Project) -> int:
    return session.execute(
        select(func.count())
        .select_from(ProjectMember)
        .where(ProjectMember.project_id == project.id, ProjectMember.role == Role.MANAGER)
    ).scalar_one()


def set_member(
    session: Session, project: Project, username: str, role: str, adjudicator: bool | None = None
) -> tuple[ProjectMember, User, bool]:
    """Add a member or change a member's role (commits). Returns (member, user, created).
    `adjudicator` (None: unchanged, new members: no) lets a reader adjudicate disagreements.

    The last manager cannot be demoted (Conflict): someone must be able to manage the project.
    """
    if role not in tuple(Role):
        raise Invalid(f"role must be one of {tuple(r.value for r in Role)}")
    user = get_by_username(session, username)
    if user is None or not user.is_active:
        raise NotFound(f"no active user named {username!r}")
    member = session.scalar(
        select(ProjectMember).where(ProjectMember.project_id == project.id, ProjectMember.user_id == user.id)
    )
    created = member is None
    if member is None:
        member = ProjectMember(
            project_id=project.id, user_id=user.id, role=role, adjudicator=bool(adjudicator)
        )
        session.add(member)
    else:
        if member.role == Role.MANAGER and role != Role.MANAGER and _managers(session, project) <= 1:
            raise Conflict(f"{user.username} is the project's last manager; make someone else manager first")
        member.role = role
        if adjudicator is not None:
            member.adjudicator = adjudicator
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"{user.username} was added concurrently; retry") from None
    return member, user, created


def remove_member(session: Session, project: Project, username: str) -> None:
    """Remove a member (commits); the last manager cannot be removed."""
    user = get_by_username(session, username)
    member = (
        session.scalar(
            select(ProjectMember).where(
                ProjectMember.project_id == project.id, ProjectMember.user_id == user.id
            )
        )
        if user
        else None
    )
    if user is None or member is None:
        raise NotFound(f"{username!r} is not a member of this project")
    if member.role == Role.MANAGER and _managers(session, project) <= 1:
        raise Conflict(f"{user.username} is the project's last manager; make someone else manager first")
    session.delete(member)
    session.commit()


def find_project(session: Session, name_or_id: str) -> Project:
    """A project by id or (case-insensitive) name, for the CLI."""
    project = None
    if name_or_id.isdigit():
        project = session.get(Project, int(name_or_id))
    if project is None:
        project = session.scalar(select(Project).where(func.lower(Project.name) == name_or_id.lower()))
    if project is None:
        raise NotFound(f"no project {name_or_id!r}")
    return project


def rename_label(session: Session, project: Project, old: str, new: str) -> dict[str, int]:
    """Rename a label everywhere in the project (commits): its place in the label list, the
    readers' current and past readings, import labels, image labels and adjudications. Returns how
    many rows changed per table. 404 for an unknown label, 409 when the new name is taken."""
    from sqlalchemy import update

    from app.tables import Adjudication, AdjudicationRevision

    if old not in project.labels:
        raise NotFound(f"the project has no label {old!r}; its labels are {project.labels}")
    if new in project.labels:
        raise Conflict(f"the project already has a label {new!r}; pick another name")
    counts: dict[str, int] = {}
    annotation_ids = select(Annotation.id).where(Annotation.project_id == project.id).scalar_subquery()
    adjudication_ids = select(Adjudication.id).where(Adjudication.project_id == project.id).scalar_subquery()
    for name, stmt in (
        (
            "annotations",
            update(Annotation).where(Annotation.project_id == project.id, Annotation.label == old),
        ),
        (
            "annotation_revisions",
            update(AnnotationRevision).where(
                AnnotationRevision.annotation_id.in_(annotation_ids), AnnotationRevision.label == old
            ),
        ),
        (
            "adjudications",
            update(Adjudication).where(Adjudication.project_id == project.id, Adjudication.label == old),
        ),
        (
            "adjudication_revisions",
            update(AdjudicationRevision).where(
                AdjudicationRevision.adjudication_id.in_(adjudication_ids), AdjudicationRevision.label == old
            ),
        ),
        ("images", update(Image).where(Image.project_id == project.id, Image.label == old)),
    ):
        counts[name] = session.execute(
            stmt.values(label=new).execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]  # a CursorResult
    counts["import_labels"] = session.execute(
        update(Image)
        .where(Image.project_id == project.id, Image.import_label == old)
        .values(import_label=new)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]  # a CursorResult
    project.labels = [new if label == old else label for label in project.labels]
    project.retired_labels = [new if label == old else label for label in (project.retired_labels or [])]
    session.commit()
    return counts
