"""Request and answer bodies of the REST API v1 (pydantic). DESIGN.md section 6 shapes are a contract.

Every answer schema lives here; routes and pages build answers with these classes, never field by
field. An answer read from a database row declares `model_config = ConfigDict(from_attributes=True)`
and is built with `XOut.model_validate(row)`:

- A field the row has under the same name is read as it is.
- A derived field names the row attribute it comes from with `validation_alias`, and a
  before-validator turns that value into the answer's (`has_saliency` from `saliency_key`,
  `file_url` from `id`). A validator that needs more reads the fields validated before it from
  `info.data` (`saliency_url` from `id` and `revision`); a row attribute needed only for that is a
  field with `exclude=True` (read, never shown, absent from the answer's OpenAPI schema).
- A nested model that groups several of the row's columns (`Agreement`, `PixelInfo`) is read from
  the row itself: the parent hands it the row under the field's name (`RowWith(row, pixels=row)`,
  in a before-validator or in `from_row`).
- A value that is not on the row (the caller's role, a project's summary, an author's name) is
  passed to the schema's `from_row(row, *, ...)` classmethod, whose keyword arguments are exactly
  that context; it reads the row through `RowWith(row, **context)`, which adds them as attributes.

Answers made from a service's plain dict (reports, counts) are built from that dict.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.tables import JobStatus, ReadingStatus, Role, as_utc
from sage.config import BACKBONES, Method

API = "/api/v1"

# The backbones sage.backbones registers (sage.config is torch-free).
Backbone = Literal[BACKBONES]  # type: ignore[valid-type]

# Every timestamp an answer carries is in UTC with its offset (SQLite hands back naive values).
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]


class RowWith:
    """A database row read with a few more attributes: the context a schema's `from_row` is given
    (values that are not on the row), or the row itself under the name of a nested model that
    groups several of its columns. Every other attribute is the row's."""

    __slots__ = ("_extra", "_row")

    def __init__(self, row: Any, **extra: Any) -> None:
        self._row = row
        self._extra = extra

    def __getattr__(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        return getattr(self._row, name)


def _is_row(data: Any) -> bool:
    """Whether a model is being read from a row (not from a dict, nor handed an answer it built)."""
    return not isinstance(data, dict | BaseModel)


# A JSON column of the row (None reads as empty).
JsonObject = Annotated[dict[str, Any], BeforeValidator(lambda value: value or {})]
# Whether the row has a stored map: its storage key is set.
HasMap = Annotated[bool, BeforeValidator(lambda key: key is not None)]


def _url(template: str) -> BeforeValidator:
    """A URL derived from one attribute of the row: `template` with the attribute's value."""
    return BeforeValidator(lambda value: template.format(value))


def _map_url(template: str, id_field: str) -> BeforeValidator:
    """The URL of a saliency map at one revision, derived from the row's map key (None: no map):
    `template` with the fields `id_field` and `revision` validated before it."""

    def url(key: str | None, info: ValidationInfo) -> str | None:
        return template.format(info.data[id_field], info.data["revision"]) if key else None

    return BeforeValidator(url)


ANNOTATION_MAP = API + "/annotations/{}/saliency.png?revision={}"
ADJUDICATION_MAP = API + "/images/{}/adjudication/saliency.png?revision={}"


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

    @classmethod
    def from_row(cls, row: Any, *, token: str) -> Self:
        """The new token's row with the `token` itself (only its hash is stored)."""
        return cls.model_validate(RowWith(row, token=token))


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
    # Read from an image row (its agreement_iou and agreement_r columns) or from a summary's dict.
    model_config = ConfigDict(from_attributes=True)

    iou: float | None = Field(
        validation_alias=AliasChoices("iou", "agreement_iou"),
        description="mean pairwise soft IoU of the annotators' maps",
    )
    pearson: float | None = Field(
        validation_alias=AliasChoices("pearson", "agreement_r"),
        description="mean pairwise Pearson correlation of the maps",
    )


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
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    labels: list[str]
    backbone: str
    image_size: int
    training: JsonObject
    retrain_enabled: bool
    retrain_min_new: int
    activation_policy: str
    next_policy: str
    readers_per_image: Annotated[int, BeforeValidator(lambda k: k or 1)] = 1
    retired_labels: Annotated[list[str], BeforeValidator(lambda labels: labels or [])] = Field(
        default_factory=list, description="labels no longer offered for new readings"
    )
    blind_mode: Annotated[str, BeforeValidator(blind_mode_name)] = Field(
        default="auto", description="auto | on | off (the setting)"
    )
    blind: bool = Field(default=False, description="whether blind reading is in force (the effect)")
    created_at: UtcDateTime
    updated_at: UtcDateTime
    role: Role = Field(description="the caller's role (site admins: manager)")
    retrain_error: str | None = Field(
        default=None, description="why scheduled retraining could not start a run (None when fine)"
    )
    summary: ProjectSummary

    @classmethod
    def from_row(cls, project: Any, *, role: str, summary: dict[str, Any]) -> Self:
        """The project as a member with `role` sees it, with its `summary`
        (app.services.projects.summaries)."""
        return cls.model_validate(RowWith(project, role=role, summary=summary))


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
    model_config = ConfigDict(from_attributes=True)

    user_id: int
    username: str
    role: Role
    adjudicator: bool = False
    created_at: UtcDateTime

    @classmethod
    def from_row(cls, member: Any, *, username: str) -> Self:
        """A ProjectMember row with its user's `username`."""
        return cls.model_validate(RowWith(member, username=username))


# --- images --------------------------------------------------------------------------------------


class Window(BaseModel):
    center: float
    width: float


# The window display.png uses for an image row that has none of its own yet (8-bit full range).
FALLBACK_WINDOW = (128.0, 256.0)


class PixelInfo(BaseModel):
    """What the decoder found (null for an image uploaded before 0004 that was not displayed yet)."""

    # Read from an image row: its bit_depth, photometric and channels columns, its default window
    # (window_center, window_width) and the presets its pixel_info column keeps as [center, width].
    model_config = ConfigDict(from_attributes=True)

    bit_depth: int | None = Field(description="bits per sample that carry information (32 for float)")
    photometric: str | None = Field(description="MONOCHROME2 (MONOCHROME1 is inverted on decode) or RGB")
    channels: int | None
    dtype: str | None = Field(validation_alias="pixel_info", description="numpy dtype of the stored array")
    # default_window is the row's (window_center, window_width), else FALLBACK_WINDOW
    window_center: float | None = Field(exclude=True)
    default_window: Window = Field(
        validation_alias="window_width", description="display.png's window when none is given"
    )
    header_window: Window | None = Field(
        validation_alias="pixel_info", description="the file's own window (DICOM VOI), if any"
    )
    auto_window: Window | None = Field(
        validation_alias="pixel_info", description="the 0.5 to 99.5 percentile range"
    )
    full_window: Window | None = Field(
        validation_alias="pixel_info", description="the whole range of the values"
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, pixel_info: dict[str, Any] | None) -> Any:
        return (pixel_info or {}).get("dtype")

    @field_validator("default_window", mode="before")
    @classmethod
    def _default_window(cls, width: float | None, info: ValidationInfo) -> dict[str, float | None]:
        center = info.data["window_center"]
        if center is None:
            center, width = FALLBACK_WINDOW
        return {"center": center, "width": width}

    @field_validator("header_window", "auto_window", "full_window", mode="before")
    @classmethod
    def _preset(cls, pixel_info: dict[str, Any] | None, info: ValidationInfo) -> Window | None:
        pair = (pixel_info or {}).get(info.field_name or "")
        return Window(center=float(pair[0]), width=float(pair[1])) if pair else None


class ImageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
    has_import_saliency: HasMap = Field(validation_alias="import_saliency_key")
    agreement: Agreement
    created_at: UtcDateTime
    file_url: Annotated[str, _url(API + "/images/{}/file")] = Field(validation_alias="id")
    pixels: PixelInfo = Field(description="the decoded pixels: depth, photometric, windows")
    display_url: Annotated[str, _url(API + "/images/{}/display.png")] = Field(
        validation_alias="id", description="8-bit PNG rendering through the default window"
    )

    @model_validator(mode="before")
    @classmethod
    def _groups_of_columns(cls, data: Any) -> Any:
        """`agreement` and `pixels` read several columns of the image row: hand them the row."""
        return RowWith(data, agreement=data, pixels=data) if _is_row(data) else data


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

    @classmethod
    def from_row(cls, image: Any, *, created: bool) -> Self:
        """The image row, `created` by this upload or already in the project."""
        return cls.model_validate(RowWith(image, created=created))


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


# A reading's status: older rows may have none, which reads as "done".
Status = Annotated[str, BeforeValidator(lambda status: status or ReadingStatus.DONE)]


class AnnotationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    image_id: int
    project_id: int
    author_id: int
    author: str
    label: str | None
    revision: int
    has_saliency: HasMap = Field(
        validation_alias="saliency_key", description="false: label only, no map (nothing was painted)"
    )
    saliency_url: Annotated[str | None, _map_url(ANNOTATION_MAP, "id")] = Field(
        validation_alias="saliency_key"
    )
    status: Status = Field(description="done | skipped | unsure | flagged")
    comment: str | None = None
    created_at: UtcDateTime
    updated_at: UtcDateTime

    @classmethod
    def from_row(cls, annotation: Any, *, author: str) -> Self:
        """An Annotation row with its `author`'s username."""
        return cls.model_validate(RowWith(annotation, author=author))


class RevisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    annotation_id: int = Field(exclude=True)
    revision: int
    label: str | None
    has_saliency: HasMap = Field(validation_alias="saliency_key")
    saliency_url: Annotated[str | None, _map_url(ANNOTATION_MAP, "annotation_id")] = Field(
        validation_alias="saliency_key"
    )
    status: Status = ReadingStatus.DONE
    comment: str | None = None
    author_id: int
    created_at: UtcDateTime


ConsensusSource = Literal["annotators", "import", "none"]


class Consensus(BaseModel):
    available: bool
    maps: int = Field(description="number of maps averaged (annotators', or the imported map)")
    source: ConsensusSource
    url: str | None


def _maps(annotations: list[AnnotationOut]) -> int:
    """How many of the annotations have a map."""
    return sum(1 for a in annotations if a.saliency_url)


class ImageAnnotations(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int = Field(validation_alias="id")
    label: str | None
    annotations: list[AnnotationOut]
    consensus: Consensus = Field(validation_alias="import_saliency_key")
    agreement: Agreement
    pairs: int = Field(validation_alias="annotations")

    @field_validator("consensus", mode="before")
    @classmethod
    def _consensus(cls, import_saliency_key: str | None, info: ValidationInfo) -> Consensus:
        """The mean of the annotators' maps, else the map that came with the import, else none."""
        maps = _maps(info.data["annotations"])
        source: ConsensusSource = "annotators" if maps else ("import" if import_saliency_key else "none")
        return Consensus(
            available=source != "none",
            maps=maps or (1 if source == "import" else 0),
            source=source,
            url=f"{API}/images/{info.data['image_id']}/saliency.png" if source != "none" else None,
        )

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs(cls, annotations: list[AnnotationOut]) -> int:
        maps = _maps(annotations)
        return maps * (maps - 1) // 2

    @classmethod
    def from_row(cls, image: Any, *, annotations: list[AnnotationOut]) -> Self:
        """An Image row with its annotators' current `annotations`."""
        return cls.model_validate(RowWith(image, annotations=annotations, agreement=image))


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


# --- reading studies -------------------------------------------------------------------------------


class Coverage(BaseModel):
    readers_per_image: int = Field(description="k: readers wanted per image")
    images_by_readers: list[int] = Field(description="images with 0, 1, ... k (or more) readers")
    complete: int = Field(description="images with k readers")
    images: int
    blind: bool = Field(description="whether blind reading is in force")


class AttentionItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int = Field(validation_alias="id")
    image_name: str = Field(validation_alias="original_name")
    annotation: AnnotationOut

    @classmethod
    def from_row(cls, image: Any, *, annotation: AnnotationOut) -> Self:
        """An Image row with the `annotation` of it that needs attention."""
        return cls.model_validate(RowWith(image, annotation=annotation))


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
    model_config = ConfigDict(from_attributes=True)

    id: int
    image_id: int
    label: str | None
    revision: int
    has_saliency: HasMap = Field(
        validation_alias="saliency_key",
        description="false: the label only was adjudicated; training keeps the mean",
    )
    saliency_url: Annotated[str | None, _map_url(ADJUDICATION_MAP, "image_id")] = Field(
        validation_alias="saliency_key"
    )
    author: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime

    @classmethod
    def from_row(cls, adjudication: Any, *, author: str | None) -> Self:
        """An Adjudication row with its `author`'s username (None: no author any more)."""
        return cls.model_validate(RowWith(adjudication, author=author))


class AdjudicationRevisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int = Field(exclude=True)
    revision: int
    label: str | None
    has_saliency: HasMap = Field(validation_alias="saliency_key")
    saliency_url: Annotated[str | None, _map_url(ADJUDICATION_MAP, "image_id")] = Field(
        validation_alias="saliency_key"
    )
    author_id: int | None
    created_at: UtcDateTime

    @classmethod
    def from_row(cls, revision: Any, *, image_id: int) -> Self:
        """An AdjudicationRevision row of the adjudication of image `image_id`."""
        return cls.model_validate(RowWith(revision, image_id=image_id))


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


# --- training runs, model versions, pretrained weights -------------------------------------------


class TrainingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    training: dict[str, Any] | None = None  # TrainConfig overrides for this run only


class TrainingRunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    status: str
    reason: str
    options: JsonObject
    progress: JsonObject
    metrics: JsonObject
    error: str | None
    attempts: int
    cancel_requested: bool
    model_id: int | None
    worker_id: str | None
    created_by_id: int | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    heartbeat_at: UtcDateTime | None
    # only in the single-run answers: from_row(run, lineage=True) reads it, model_validate(run) does not
    lineage: dict[str, Any] | None = Field(default=None, validation_alias="lineage_shown")
    joined: bool | None = None  # POST: true when an existing queued or running run was joined
    events_url: Annotated[str, _url(API + "/training-runs/{}/events")] = Field(validation_alias="id")

    @classmethod
    def from_row(cls, run: Any, *, lineage: bool = False, joined: bool | None = None) -> Self:
        """A TrainingRun row; with `lineage`, the annotation revisions it trained on; `joined` in
        the answer to a start that found a run already queued or running."""
        return cls.model_validate(
            RowWith(run, lineage_shown=(run.lineage or {}) if lineage else None, joined=joined)
        )


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    version: int
    active: bool
    run_id: int | None
    backbone: str
    labels: Annotated[list[str], BeforeValidator(lambda labels: labels or [])]
    metrics: JsonObject
    config: JsonObject
    checksum: str
    created_at: UtcDateTime
    activated_at: UtcDateTime | None


class WeightsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    backbone: str
    file: str
    source: str  # "torchvision" or "custom"
    present: bool  # false: a torchvision file a worker downloads on first use (SAGE_ALLOW_DOWNLOAD=1)

    @classmethod
    def from_row(cls, row: Any, *, present: bool) -> Self:
        """A WeightsFile row (a file `sage-studio weights add` stored), `present` or not."""
        return cls.model_validate(RowWith(row, present=present))


# --- predictions -----------------------------------------------------------------------------------


class PredictAnswer(BaseModel):
    label: str
    probabilities: dict[str, float]
    confidence: float
    uncertainty: float
    model_id: int
    model_version: int
    project_id: int
    heatmap_png: str | None = None  # base64 PNG: the heatmap blended over the image
    # base64 8-bit grayscale PNG of the heatmap itself at the image's size (heatmap=raw or both)
    raw_heatmap_png: str | None = None
    worker_ms: float | None = None


class PredictJob(BaseModel):
    job_id: str
    status: str  # pending | running | succeeded | failed
    poll_url: str
    result: PredictAnswer | None = None
    error: str | None = None


class StoredPrediction(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int
    model_id: int
    model_version: int
    label: str
    confidence: float
    uncertainty: float
    probabilities: Annotated[dict[str, float], BeforeValidator(lambda value: value or {})]
    alignment: float | None  # soft IoU of the heatmap with the consensus saliency
    alignment_detail: JsonObject
    # True when blind reading hides the alignment (and the readers' label) until the caller has
    # read the image: alignment is null and alignment_detail empty then
    alignment_hidden: bool = False
    heatmap_url: str | None = Field(validation_alias="heatmap_key")
    overlay_url: str | None = Field(validation_alias="heatmap_key")
    # the default window: DICOM shows too
    image_url: Annotated[str, _url(API + "/images/{}/display.png")] = Field(validation_alias="image_id")
    image_label: str | None = None
    created_at: UtcDateTime

    @field_validator("heatmap_url", "overlay_url", mode="before")
    @classmethod
    def _heatmap_url(cls, key: str | None, info: ValidationInfo) -> str | None:
        name = "heatmap" if info.field_name == "heatmap_url" else "overlay"
        return f"{API}/images/{info.data['image_id']}/prediction/{name}.png" if key else None

    @classmethod
    def from_row(cls, prediction: Any, *, model_version: int, image_label: str | None) -> Self:
        """A Prediction row with its model's `model_version` and its image's `image_label`."""
        return cls.model_validate(RowWith(prediction, model_version=model_version, image_label=image_label))


# --- jobs: model exports, batch predictions, sanity checks ------------------------------------------


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    kind: str  # export | predict_batch | sanity_check
    status: str  # queued | running | succeeded | failed | expired (its result was deleted)
    params: dict[str, Any]
    progress: JsonObject  # {"done", "total"} while a batch runs
    result: JsonObject
    result_sha256: str | None
    # where the result zip is served once the job succeeded
    result_url: str | None = Field(validation_alias="result_key")
    poll_url: Annotated[str, _url(API + "/jobs/{}")] = Field(validation_alias="id")
    error: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime

    @field_validator("params", mode="before")
    @classmethod
    def _public_params(cls, params: dict[str, Any] | None) -> dict[str, Any]:
        """The job's parameters without the storage key of its input."""
        return {k: v for k, v in (params or {}).items() if k != "input_key"}

    @field_validator("result_url", mode="before")
    @classmethod
    def _result_url(cls, result_key: str | None, info: ValidationInfo) -> str | None:
        """An export is served at its model's download URL, any other result at the job's."""
        job = info.data
        if job["status"] != JobStatus.SUCCEEDED or not result_key:
            return None
        if job["kind"] == "export":
            return f"{API}/models/{job['params']['model_id']}/download?format={job['params']['format']}"
        return f"{API}/jobs/{job['id']}/result"


class RepredictOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    project_id: int
    model_id: int = Field(validation_alias="id")
    model_version: int = Field(validation_alias="version")
    status: str  # queued

    @classmethod
    def from_row(cls, model: Any, *, status: str) -> Self:
        """A ModelVersion row whose predictions of every image are `status`."""
        return cls.model_validate(RowWith(model, status=status))


class SanityCheckOut(BaseModel):
    job_id: int
    model_id: int
    run_id: int | None
    status: str  # the training run's: queued | running | succeeded | failed | cancelled
    progress: dict[str, Any]
    error: str | None
    inverted_model_id: int | None  # the version trained on inverted maps (never activated)
    original: dict[str, Any]  # val/test accuracy, val loss, AUROC, EER, alignment
    inverted: dict[str, Any]
    comparison: dict[str, Any] | None  # {metric, original, inverted, drop, maps_matter, reading}
