"""Request and answer bodies of the REST API v1 (pydantic). DESIGN.md section 6 shapes are a contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from app.tables import Role, as_utc
from sage.config import BACKBONES, Method

# The backbones sage.backbones registers (sage.config is torch-free).
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


def _registered_weights_schema(schema: dict[str, Any]) -> None:
    """The schema of `weights`: one of the names registered when the schema is built, or null."""
    from sage.weights import WeightsError, list_weights  # torch-free

    try:
        names = [e.name for e in list_weights()]
    except (WeightsError, OSError):
        names = []
    description = schema.get("description")
    schema.clear()
    schema.update({"anyOf": [{"enum": names}, {"type": "null"}]} if names else {"type": "null"})
    if description:
        schema["description"] = description


class TrainingOptions(BaseModel):
    """Overrides of the default training configuration (the worker validates the full set).

    Known keys are checked here; other keys pass through to the worker's TrainConfig."""

    model_config = ConfigDict(extra="allow", strict=True)  # "1" is not an int here

    # strict=False: a Method's name ("sage") is accepted from dicts too, not only from JSON
    method: Annotated[Method, Field(strict=False)] | None = None
    backbone: Backbone | None = None
    image_size: int | None = Field(default=None, ge=8, le=1024)
    epochs: int | None = Field(default=None, ge=1, le=10_000)  # the default SAGE_MAX_TRAIN_* bounds
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    lr: float | None = Field(default=None, gt=0, le=10)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    weights: str | None = Field(
        default=None,
        max_length=100,
        description="pretrained weights by registered name (GET /api/v1/weights)",
        json_schema_extra=_registered_weights_schema,
    )

    @model_validator(mode="after")
    def _registered_weights_only(self) -> TrainingOptions:
        if "pretrained_path" in (self.model_extra or {}):
            raise ValueError(
                "pretrained_path cannot be set through SAGE Studio; register the file with "
                "`sage-studio weights add FILE` and set weights to its name"
            )
        if self.weights is not None:
            from sage.weights import WeightsError, resolve  # torch-free

            try:
                resolve(self.weights, self.backbone)
            except WeightsError as exc:
                raise ValueError(str(exc)) from exc
        return self

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


BlindMode = Annotated[
    Literal["auto", "on", "off"],
    Field(
        description="blind reading: a reader sees no other reader's label or map of an image before "
        "saving their own (managers and adjudicators excepted); auto: on when readers_per_image > 1"
    ),
]
BLIND_MODE_VALUES = {"auto": None, "on": True, "off": False}


def blind_mode_name(value: bool | None) -> str:
    return "auto" if value is None else ("on" if value else "off")


class ProjectCreate(Strict):
    name: Name
    description: Description = ""
    labels: Labels
    backbone: Backbone = "tiny"
    image_size: int | None = Field(
        default=None, ge=8, le=1024, description="default by backbone: 224 (ImageNet CNNs, ViT), 64 (tiny)"
    )
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    retrain_enabled: StrictBool = True
    retrain_min_new: int = Field(default=20, ge=1, le=1_000_000)
    activation_policy: Literal["auto", "manual"] = "auto"
    next_policy: NextPolicy = "sequential"
    readers_per_image: int = Field(default=1, ge=1, le=50, description="readers wanted per image (k)")
    blind_mode: BlindMode = "auto"


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
    readers_per_image: int | None = Field(
        default=None, ge=1, le=50, description="readers wanted per image (k)"
    )
    blind_mode: BlindMode | None = None
    retired_labels: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] | None = Field(
        default=None,
        max_length=1000,
        description="labels no longer offered for new readings (existing ones keep them)",
    )


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
    readers_per_image: int = 1
    retired_labels: list[str] = Field(
        default_factory=list, description="labels no longer offered for new readings"
    )
    blind_mode: str = Field(default="auto", description="auto | on | off (the setting)")
    blind: bool = Field(default=False, description="whether blind reading is in force (the effect)")
    created_at: UtcDateTime
    updated_at: UtcDateTime
    role: Role = Field(description="the caller's role (site admins: manager)")
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
    role: Role
    adjudicator: bool | None = Field(
        default=None,
        description="may adjudicate disagreements and see every reader's work (default: unchanged)",
    )


class MemberOut(BaseModel):
    user_id: int
    username: str
    role: Role
    adjudicator: bool = False
    created_at: UtcDateTime


# --- images --------------------------------------------------------------------------------------


class Window(BaseModel):
    center: float
    width: float


class PixelInfo(BaseModel):
    """What the decoder found (null for an image uploaded before 0004 that was not displayed yet)."""

    bit_depth: int | None = Field(description="bits per sample that carry information (32 for float)")
    photometric: str | None = Field(description="MONOCHROME2 (MONOCHROME1 is inverted on decode) or RGB")
    channels: int | None
    dtype: str | None = Field(description="numpy dtype of the stored array")
    default_window: Window = Field(description="display.png's window when none is given")
    header_window: Window | None = Field(description="the file's own window (DICOM VOI), if any")
    auto_window: Window | None = Field(description="the 0.5 to 99.5 percentile range")
    full_window: Window | None = Field(description="the whole range of the values")


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
    group: str | None = Field(
        default=None, description="patient, subject or device; a group never spans splits"
    )
    subtype: str | None = Field(
        default=None, description="e.g. an attack type; training option leave_out_subtype holds it out"
    )
    import_label: str | None
    label: str | None = Field(description="majority of the annotators' labels, else the import label")
    annotation_count: int
    has_import_saliency: bool
    agreement: Agreement
    created_at: UtcDateTime
    file_url: str
    pixels: PixelInfo = Field(description="the decoded pixels: depth, photometric, windows")
    display_url: str = Field(description="8-bit PNG rendering through the default window")


class BulkAction(Strict):
    image_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=1000)
    action: Literal["set_split", "set_label", "delete", "requeue"]
    split: Literal["train", "val", "test"] | None = None
    label: Annotated[str, StringConstraints(max_length=100), AfterValidator(_no_control_chars)] | None = (
        Field(default=None, description="set_label: the new import label ('' or null clears it)")
    )


class BulkResult(BaseModel):
    action: str
    changed: int
    missing: int = Field(description="ids that are not images of this project")
    image_ids: list[int]


class LabelRename(Strict):
    old: LabelName = Field(alias="from", description="the label's current name")
    new: LabelName = Field(alias="to", description="its new name")


class LabelRenameResult(BaseModel):
    labels: list[str]
    changed: dict[str, int] = Field(description="rows renamed per table")


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
    has_saliency: bool = Field(description="false: label only, no map (nothing was painted)")
    saliency_url: str | None
    status: str = Field(description="done | skipped | unsure | flagged")
    comment: str | None = None
    created_at: UtcDateTime
    updated_at: UtcDateTime


class RevisionOut(BaseModel):
    revision: int
    label: str | None
    has_saliency: bool
    saliency_url: str | None
    status: str = "done"
    comment: str | None = None
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
    readings: int = Field(default=0, description="readers' readings imported from readings.csv")
    readings_of_unknown_readers: int = Field(
        default=0, description="readings left out: their reader has no account here"
    )
    adjudications: int = Field(default=0, description="adjudications imported from adjudications.csv")


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
        group=image.group,
        subtype=image.subtype,
        import_label=image.import_label,
        label=image.label,
        annotation_count=image.annotation_count,
        has_import_saliency=image.import_saliency_key is not None,
        agreement=Agreement(iou=image.agreement_iou, pearson=image.agreement_r),
        created_at=image.created_at,
        file_url=f"{API}/images/{image.id}/file",
        pixels=pixel_info_out(image),
        display_url=f"{API}/images/{image.id}/display.png",
    )


def _window(pair: Any) -> Window | None:
    return Window(center=float(pair[0]), width=float(pair[1])) if pair else None


def pixel_info_out(image: Any) -> PixelInfo:
    info = image.pixel_info or {}
    default = (image.window_center, image.window_width) if image.window_center is not None else (128.0, 256.0)
    return PixelInfo(
        bit_depth=image.bit_depth,
        photometric=image.photometric,
        channels=image.channels,
        dtype=info.get("dtype"),
        default_window=Window(center=default[0], width=default[1]),
        header_window=_window(info.get("header_window")),
        auto_window=_window(info.get("auto_window")),
        full_window=_window(info.get("full_window")),
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
        status=annotation.status or "done",
        comment=annotation.comment,
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
        readers_per_image=project.readers_per_image or 1,
        retired_labels=list(project.retired_labels or []),
        blind_mode=blind_mode_name(project.blind_mode),
        blind=project.blind,
        created_at=as_utc(project.created_at),
        updated_at=as_utc(project.updated_at),
        role=role,
        retrain_error=getattr(project, "retrain_error", None),
        summary=ProjectSummary(**summary),
    )
