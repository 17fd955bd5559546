"""Request and answer bodies of the REST API v1 (pydantic). DESIGN.md section 6 shapes are a contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from app.models import as_utc
from sage.config import BACKBONES

# The backbones sage.models registers (sage.config is torch-free).
Backbone = Literal[BACKBONES]  # type: ignore[valid-type]

# Every timestamp an answer carries is in UTC with its offset (SQLite hands back naive values).
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError("must not contain control characters")
    return value


# Text that goes into the database: no NUL or other control characters (PostgreSQL refuses NUL).
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # in the schema too, so clients know before they send
# ... and at least one visible character (names are stripped of surrounding white space)
VISIBLE_TEXT = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=VISIBLE_TEXT),
    AfterValidator(_no_control_chars),
]
LabelName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=VISIBLE_TEXT),
    AfterValidator(_no_control_chars),
]
Description = Annotated[
    str, StringConstraints(max_length=10_000), AfterValidator(lambda v: v.replace("\x00", ""))
]
Split = Literal["train", "val", "test"]
RoleName = Literal["viewer", "annotator", "manager"]
NextPolicy = Literal["sequential", "random", "uncertainty", "misalignment"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- auth, users, tokens -----------------------------------------------------------------------


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    is_admin: bool
    is_active: bool
    created_at: UtcDateTime


class UserCreate(Strict):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)]
    is_admin: StrictBool = False


class UserUpdate(Strict):
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)] | None = None
    is_admin: StrictBool | None = None
    is_active: StrictBool | None = None


class PasswordChange(Strict):
    current_password: Annotated[str, StringConstraints(max_length=1024)]
    new_password: Annotated[str, StringConstraints(min_length=8, max_length=1024)]
    keep_api_tokens: StrictBool = Field(
        default=False, description="keep your personal API tokens (by default they are revoked)"
    )


class ApiTokenCreate(Strict):
    name: Annotated[Name, StringConstraints(max_length=100)]
    expires_in_days: int | None = Field(
        default=None, ge=1, le=3650, description="default: the server's SAGE_API_TOKEN_DEFAULT_TTL_DAYS"
    )
    scope: Literal["read", "write"] = Field(default="write", description="read: GET requests only")


class ApiTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None
    expires_at: UtcDateTime | None
    revoked_at: UtcDateTime | None
    scope: str


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="the token itself; shown only in this answer, store it now")


# --- projects ------------------------------------------------------------------------------------


class TrainingOptions(BaseModel):
    """Overrides of the default training configuration (the worker validates the full set).

    Known keys are checked here; other keys pass through to the worker's TrainConfig."""

    model_config = ConfigDict(extra="allow", strict=True)  # "1" is not an int here

    method: Literal["ce", "blur", "cyborg", "rrr", "gradia", "sage", "sage-inverted"] | None = None
    backbone: Backbone | None = None
    image_size: int | None = Field(default=None, ge=8, le=1024)
    epochs: int | None = Field(default=None, ge=1, le=10_000)  # the default SAGE_MAX_TRAIN_* bounds
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    lr: float | None = Field(default=None, gt=0, le=10)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, mode="json")


def _unique_labels(labels: list[str]) -> list[str]:
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise ValueError(f"label {label!r} appears twice")
        seen.add(label)
    return labels


Labels = Annotated[
    list[LabelName],
    Field(min_length=1, max_length=1000, json_schema_extra={"uniqueItems": True}),
    AfterValidator(_unique_labels),
]


class ProjectCreate(Strict):
    name: Name
    description: Description = ""
    labels: Labels
    backbone: Backbone = "tiny"
    image_size: int = Field(default=64, ge=8, le=1024)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    retrain_enabled: StrictBool = True
    retrain_min_new: int = Field(default=20, ge=1, le=1_000_000)
    activation_policy: Literal["auto", "manual"] = "auto"
    next_policy: NextPolicy = "sequential"


class ProjectUpdate(Strict):
    name: Name | None = None
    description: Description | None = None
    labels: Labels | None = None
    backbone: Backbone | None = None
    image_size: int | None = Field(default=None, ge=8, le=1024)
    training: TrainingOptions | None = None
    retrain_enabled: StrictBool | None = None
    retrain_min_new: int | None = Field(default=None, ge=1, le=1_000_000)
    activation_policy: Literal["auto", "manual"] | None = None
    next_policy: NextPolicy | None = None


class Agreement(BaseModel):
    iou: float | None = Field(description="mean pairwise soft IoU of the annotators' maps")
    pearson: float | None = Field(description="mean pairwise Pearson correlation of the maps")


class ProjectAgreement(Agreement):
    images: int = Field(description="images with at least two annotators' maps")


class ProjectSummary(BaseModel):
    images: int
    labelled: int
    annotated: int = Field(description="images with at least one annotation")
    annotations: int
    labels: dict[str, int] = Field(description="images per label")
    agreement: ProjectAgreement


class ProjectOut(BaseModel):
    id: int
    name: str
    description: str
    labels: list[str]
    backbone: str
    image_size: int
    training: dict[str, Any]
    retrain_enabled: bool
    retrain_min_new: int
    activation_policy: str
    next_policy: str
    created_at: UtcDateTime
    updated_at: UtcDateTime
    role: RoleName = Field(description="the caller's role (site admins: manager)")
    retrain_error: str | None = Field(
        default=None, description="why scheduled retraining could not start a run (None when fine)"
    )
    summary: ProjectSummary


class MemberIn(Strict):
    username: Annotated[
        str,
        StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL),
        AfterValidator(_no_control_chars),
    ]
    role: RoleName


class MemberOut(BaseModel):
    user_id: int
    username: str
    role: RoleName
    created_at: UtcDateTime


# --- images --------------------------------------------------------------------------------------


class ImageOut(BaseModel):
    id: int
    project_id: int
    sha256: str
    width: int
    height: int
    format: str
    size_bytes: int
    original_name: str
    split: str | None
    import_label: str | None
    label: str | None = Field(description="majority of the annotators' labels, else the import label")
    annotation_count: int
    has_import_saliency: bool
    agreement: Agreement
    created_at: UtcDateTime
    file_url: str


class UploadedImage(ImageOut):
    created: bool = Field(description="false when the same bytes were already in the project")


class UploadResult(BaseModel):
    images: list[UploadedImage]
    created: int
    existing: int


class ImagePage(BaseModel):
    items: list[ImageOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class ImageUpdate(Strict):
    split: Split | None = None
    import_label: LabelName | None = None
    clear_import_label: StrictBool = False


class NextImage(BaseModel):
    image: ImageOut | None = Field(description="null when the caller has annotated every image")
    policy: NextPolicy = Field(description="the ordering actually used")
    done: bool


# --- annotations ---------------------------------------------------------------------------------


class AnnotationOut(BaseModel):
    id: int
    image_id: int
    project_id: int
    author_id: int
    author: str
    label: str | None
    revision: int
    has_saliency: bool
    saliency_url: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime


class RevisionOut(BaseModel):
    revision: int
    label: str | None
    has_saliency: bool
    saliency_url: str | None
    author_id: int
    created_at: UtcDateTime


class Consensus(BaseModel):
    available: bool
    maps: int = Field(description="number of maps averaged (annotators', or the imported map)")
    source: Literal["annotators", "import", "none"]
    url: str | None


class ImageAnnotations(BaseModel):
    image_id: int
    label: str | None
    annotations: list[AnnotationOut]
    consensus: Consensus
    agreement: Agreement
    pairs: int


class ImportReport(BaseModel):
    imported: int
    existing: int = Field(
        description="rows whose image bytes were already in the project (left as they were)"
    )
    with_saliency: int
    labels: dict[str, int]
    splits: dict[str, int]
    ignored_files: list[str] = Field(description="files in the zip that labels.csv does not name")
    image_ids: list[int]


# --- answers built from rows -------------------------------------------------------------------------

API = "/api/v1"


def image_out(image: Any) -> ImageOut:
    return ImageOut(
        id=image.id,
        project_id=image.project_id,
        sha256=image.sha256,
        width=image.width,
        height=image.height,
        format=image.format,
        size_bytes=image.size_bytes,
        original_name=image.original_name,
        split=image.split,
        import_label=image.import_label,
        label=image.label,
        annotation_count=image.annotation_count,
        has_import_saliency=image.import_saliency_key is not None,
        agreement=Agreement(iou=image.agreement_iou, pearson=image.agreement_r),
        created_at=image.created_at,
        file_url=f"{API}/images/{image.id}/file",
    )


def annotation_out(annotation: Any, author: str) -> AnnotationOut:
    return AnnotationOut(
        id=annotation.id,
        image_id=annotation.image_id,
        project_id=annotation.project_id,
        author_id=annotation.author_id,
        author=author,
        label=annotation.label,
        revision=annotation.revision,
        has_saliency=annotation.saliency_key is not None,
        saliency_url=f"{API}/annotations/{annotation.id}/saliency.png?revision={annotation.revision}"
        if annotation.saliency_key
        else None,
        created_at=annotation.created_at,
        updated_at=annotation.updated_at,
    )


def project_out(project: Any, role: str, summary: dict[str, Any]) -> ProjectOut:
    return ProjectOut(
        id=project.id,
        name=project.name,
        description=project.description,
        labels=list(project.labels),
        backbone=project.backbone,
        image_size=project.image_size,
        training=dict(project.training or {}),
        retrain_enabled=project.retrain_enabled,
        retrain_min_new=project.retrain_min_new,
        activation_policy=project.activation_policy,
        next_policy=project.next_policy,
        created_at=as_utc(project.created_at),
        updated_at=as_utc(project.updated_at),
        role=role,
        retrain_error=getattr(project, "retrain_error", None),
        summary=ProjectSummary(**summary),
    )
