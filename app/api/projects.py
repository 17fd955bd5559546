"""REST API v1: projects, members, the next image to annotate, dataset import and export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Query, Request, Response, UploadFile, status
from fastapi.responses import JSONResponse, StreamingResponse

from app.deps import (
    CurrentUser,
    ProjectAnnotator,
    ProjectManager,
    ProjectViewer,
    SessionDep,
    SettingsDep,
    StorageDep,
    member_role,
)
from app.schemas import (
    BLIND_MODE_VALUES,
    ImageOut,
    ImportReport,
    LabelRename,
    LabelRenameResult,
    MemberIn,
    MemberOut,
    NextImage,
    NextPolicy,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
)
from app.services import datasets, reading
from app.services import images as image_service
from app.services import model_versions as model_service
from app.services import projects as project_service
from app.services import runs as run_service
from app.services.errors import TooLarge
from app.tables import Role

router = APIRouter(tags=["projects"])


def _out(session, project, role: str) -> ProjectOut:
    """One project as a member with `role` sees it, with its summary."""
    summary = project_service.summaries(session, [project.id])[project.id]
    return ProjectOut.from_row(project, role=role, summary=summary)


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(user: CurrentUser, session: SessionDep) -> list[ProjectOut]:
    """The projects you are a member of (site admins: all), with your role and summary counts."""
    visible = project_service.visible_projects(session, user)
    sums = project_service.summaries(session, [p.id for p, _ in visible])
    return [ProjectOut.from_row(p, role=role, summary=sums[p.id]) for p, role in visible]


@router.post("/projects", response_model=ProjectOut, status_code=status.HTTP_201_CREATED)
def create_project(
    body: ProjectCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> ProjectOut:
    """Create a project; you become its manager. 409 when the name is taken; 422 for unknown or
    out-of-bounds training options."""
    fields = body.model_dump()
    fields["training"] = body.training.as_dict()
    run_service.check_project_training(fields, settings)
    fields["blind_mode"] = BLIND_MODE_VALUES[body.blind_mode]
    project = project_service.create_project(session, user, **fields)
    return _out(session, project, Role.MANAGER)


@router.get("/projects/{pid}", response_model=ProjectOut)
def get_project(project: ProjectViewer, user: CurrentUser, session: SessionDep) -> ProjectOut:
    """Settings and summary: images, labelled, annotated, annotations, images per label and the
    project-level agreement (mean over images with two or more maps)."""
    return _out(session, project, member_role(session, user, project.id))


def _check_training(project, fields: dict) -> None:
    """The project's training options after this change, validated by TrainConfig as a training
    run's are (422 naming the bad option), so a settings change cannot store options no run accepts."""
    from types import SimpleNamespace

    from app.services.runs import resolve_options

    labels = list(fields.get("labels", project.labels) or [])
    after = SimpleNamespace(
        id=project.id,
        backbone=fields.get("backbone", project.backbone),
        image_size=fields.get("image_size", project.image_size),
        # the number of labels is checked when a run starts: a project may be set up label by label
        labels=labels + [f"(label {i})" for i in range(len(labels), 2)],
        training=fields.get("training", project.training),
    )
    resolve_options(after, None)


@router.patch("/projects/{pid}", response_model=ProjectOut)
def update_project(
    body: ProjectUpdate,
    project: ProjectManager,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> ProjectOut:
    """Change settings (managers). Removing a label that is still used answers 409; training
    options that a training run would refuse answer 422."""
    fields = body.model_dump(exclude_unset=True)
    if body.training is not None:
        fields["training"] = body.training.as_dict()
    fields = {k: v for k, v in fields.items() if v is not None}
    if "blind_mode" in fields:
        fields["blind_mode"] = BLIND_MODE_VALUES[fields["blind_mode"]]
    if {"training", "backbone", "image_size"} & set(fields):
        _check_training(project, fields)
        run_service.check_project_training(  # and the server's upper bounds
            {
                "backbone": fields.get("backbone", project.backbone),
                "image_size": fields.get("image_size", project.image_size),
                "training": fields.get("training", project.training),
            },
            settings,
        )
    project_service.update_project(session, project, **fields)
    return _out(session, project, member_role(session, user, project.id))


@router.delete("/projects/{pid}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(project: ProjectManager, session: SessionDep, storage: StorageDep) -> Response:
    """Delete the project with all its images, annotations, runs and models (managers)."""
    project_service.delete_project(session, storage, project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/projects/{pid}/labels/rename",
    response_model=LabelRenameResult,
    responses={404: {"description": "no such label"}, 409: {"description": "the new name is taken"}},
)
def rename_label(body: LabelRename, project: ProjectManager, session: SessionDep) -> LabelRenameResult:
    """Rename a label (managers) and every use of it: readings and their history, import labels,
    image labels and adjudications."""
    changed = project_service.rename_label(session, project, body.old, body.new)
    return LabelRenameResult(labels=list(project.labels), changed=changed)


# --- members ----------------------------------------------------------------------------------------


@router.get("/projects/{pid}/members", response_model=list[MemberOut])
def list_members(project: ProjectViewer, session: SessionDep) -> list[MemberOut]:
    return [
        MemberOut.from_row(m, username=u.username) for m, u in project_service.list_members(session, project)
    ]


@router.post("/projects/{pid}/members", response_model=MemberOut)
def set_member(body: MemberIn, project: ProjectManager, session: SessionDep, response: Response) -> MemberOut:
    """Add a member (201) or change a member's role (200) (managers). 404 for an unknown username;
    409 when it would leave the project without a manager."""
    member, user, created = project_service.set_member(
        session, project, body.username, body.role, adjudicator=body.adjudicator
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return MemberOut.from_row(member, username=user.username)


@router.delete("/projects/{pid}/members/{username}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(
    username: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")],
    project: ProjectManager,
    session: SessionDep,
) -> Response:
    """Remove a member (managers); the last manager cannot be removed (409)."""
    project_service.remove_member(session, project, username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- next ---------------------------------------------------------------------------------------------


@router.get("/projects/{pid}/next", response_model=NextImage)
def next_image(
    project: ProjectAnnotator,
    user: CurrentUser,
    session: SessionDep,
    policy: Annotated[NextPolicy | None, Query(description="default: the project's next_policy")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="the image being skipped")] = None,
) -> NextImage:
    """Your next image to annotate: never one you already annotated. `image` is null when done.

    Policies: sequential (id order, after `after`, wrapping), random, uncertainty and
    misalignment (ordered by the active model's stored predictions; sequential when there are none)."""
    image, used = image_service.next_image(session, project, user, policy=policy, after=after)
    out = ImageOut.model_validate(image) if image else None
    if out is not None and reading.hidden_image_ids(session, project, user, [image.id]):
        reading.redact_image(out)
    return NextImage(image=out, policy=used, done=image is None)


# --- dataset import and export ------------------------------------------------------------------------


@router.post(
    "/projects/{pid}/import",
    response_model=ImportReport,
    status_code=status.HTTP_201_CREATED,
    responses={422: {"description": "rejected; `errors` lists each problem's file and line"}},
)
def import_dataset(
    request: Request,
    project: ProjectManager,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a zip of the dataset folder")],
):
    """Import a zip in the dataset folder format (managers), all or nothing.

    On any bad row the answer is 422 with `detail` and `errors` [{file, line, error}] and nothing
    is imported. Zip slip, symlinks and zip bombs are refused (422/413)."""
    size = file.size if file.size is not None else 0
    if size > settings.max_import_bytes:
        raise TooLarge(f"the zip is {size:,} bytes, over the limit of {settings.max_import_bytes:,}")
    source = datasets.ZipSource(file.file, settings)
    try:
        report = datasets.import_dataset(session, storage, settings, project, user, source)
    except datasets.ImportRejected as exc:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail, "errors": exc.errors})
    model_service.after_images_added(session, request.app.state.celery, project.id)
    return ImportReport(**report)


@router.get(
    "/projects/{pid}/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the dataset folder as a zip"},
        403: {"description": "blind reading: managers and adjudicators only"},
    },
)
def export_dataset(
    project: ProjectViewer,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    only_labelled: bool = False,
) -> StreamingResponse:
    """Stream the project as a zip in the dataset folder format: labels.csv (image labels: majority
    of the annotators, else the import label), images/ byte-identical to the uploads, and
    saliency/<stem>.png consensus maps. In a blind project only managers and adjudicators (403)."""
    reading.check_can_export(session, project, user)
    entries, _ = datasets.dataset_entries(session, project, only_labelled=only_labelled)
    session.close()  # the stream reads storage only
    folder = f"project-{project.id}"
    return StreamingResponse(
        datasets.export_zip_stream(storage, entries, folder=folder),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{folder}.zip"'},
    )
