"""Database tables (SQLAlchemy 2 declarative). Created only by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes even for timezone-aware columns; every timestamp this app
    writes is UTC, so a naive value is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Browser sessions carry the epoch they were issued in; logout and password change bump it,
    # which ends every session issued before, server side.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ApiToken(Base):
    """A personal API token. Only its SHA-256 is stored (tokens are 256-bit random, so no slow hash is needed)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # "write": everything the owner may do; "read": safe methods (GET, HEAD, OPTIONS) only.
    scope: Mapped[str] = mapped_column(String(10), default="write", server_default="write")

    user: Mapped[User] = relationship()


class LoginFailure(Base):
    """One failed login, for the rate limit every web process shares (`app.security`). The key is
    the SHA-256 of the lower-cased username and the client address, so a password typed into the
    username field is never stored."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"), Index("ix_login_failures_at", "at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ordered class names
    backbone: Mapped[str] = mapped_column(String(50), default="tiny")
    image_size: Mapped[int] = mapped_column(Integer, default=64)
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # default TrainConfig overrides
    # Retraining policy: beat starts a run once `retrain_min_new` annotations changed since the active model.
    retrain_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    retrain_min_new: Mapped[int] = mapped_column(Integer, default=20)
    activation_policy: Mapped[str] = mapped_column(String(20), default="auto")  # auto | manual
    next_policy: Mapped[str] = mapped_column(String(20), default="sequential")
    # Why beat's periodic retraining could not start a run here (bad stored options, ...); None when fine.
    retrain_error: Mapped[str | None] = mapped_column(Text, default=None)
    # Reading studies (issue 12): readers wanted per image, and blind reading (None: on when k > 1).
    readers_per_image: Mapped[int] = mapped_column(Integer, default=1)
    blind_mode: Mapped[bool | None] = mapped_column(Boolean, default=None)
    # Labels no longer offered for new readings; existing readings keep them.
    retired_labels: Mapped[list[Any]] = mapped_column(JSON, default=list)

    @property
    def blind(self) -> bool:
        """Whether blind reading is in force: the setting, else on exactly when k > 1."""
        if self.blind_mode is not None:
            return bool(self.blind_mode)
        return (self.readers_per_image or 1) > 1

    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Role(StrEnum):
    """A member's role in a project, lowest first: viewer (view and predict), annotator (also
    annotate), manager (also settings, members, training and model activation)."""

    # The docstring is the API's description of the schema. In code, `at_least` compares by that
    # order (`rank`), not by the alphabet; `ProjectMember.role` holds the value.
    VIEWER = "viewer"
    ANNOTATOR = "annotator"
    MANAGER = "manager"

    @property
    def rank(self) -> int:
        """1 for viewer, 2 for annotator, 3 for manager."""
        return tuple(Role).index(self) + 1

    def at_least(self, other: str) -> bool:
        """Whether this role may do what `other` (a Role or its name) may."""
        return self.rank >= Role(other).rank


class ProjectMember(Base):
    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))  # a Role
    # May adjudicate disagreements and see every reader's work, whatever the role.
    adjudicator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship()


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256"),
        Index("ix_images_project_split_id", "project_id", "split", "id"),
        # Keyset pagination and `next` walk a project's images in id order.
        Index("ix_images_project_id_id", "project_id", "id"),
        # Deleting a file after its row is gone: is any other row still using the object?
        Index("ix_images_storage_key", "storage_key"),
        Index("ix_images_import_saliency_key", "import_saliency_key"),
        Index("ix_images_project_group", "project_id", "group"),
        Index("ix_images_array_key", "array_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255))
    original_name: Mapped[str] = mapped_column(String(255), default="")
    format: Mapped[str] = mapped_column(String(10))  # png | jpeg | tiff | bmp
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    split: Mapped[str | None] = mapped_column(String(10), default=None)  # train | val | test | None
    # Patient, subject or device: images of one group always share a split (`draw_splits`).
    group: Mapped[str | None] = mapped_column(String(100), default=None)
    import_label: Mapped[str | None] = mapped_column(String(100), default=None)
    # labels.csv `subtype` (e.g. an attack type): enables leave-subtype-out evaluation
    subtype: Mapped[str | None] = mapped_column(String(100), default=None)
    # Saliency map that came with an import (dataset folder saliency/<stem>.png): the consensus
    # when no annotator has painted one, so import -> export round-trips.
    import_saliency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # Denormalised counters so list filters and `next` stay index-only at 100k images.
    annotation_count: Mapped[int] = mapped_column(Integer, default=0)
    # The image's label: majority of its annotators' current labels, else import_label. Kept in
    # step by app.services.annotations on every write.
    label: Mapped[str | None] = mapped_column(String(100), default=None)
    # Agreement of the annotators' current maps (None below two maps); project agreement averages these.
    agreement_iou: Mapped[float | None] = mapped_column(Float, default=None)
    agreement_r: Mapped[float | None] = mapped_column(Float, default=None)
    # Readers this image wants when re-queued for reading (None: the project's readers_per_image).
    readers_wanted: Mapped[int | None] = mapped_column(Integer, default=None)
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The decoded pixels at full precision (sage.imageio), stored once at upload or import as .npy
    # (content-addressed); display, training and prediction read them, never the original again.
    # Rows from before migration 0004 get them on first use (app.services.images.pixel_array).
    array_key: Mapped[str | None] = mapped_column(String(255), default=None)
    bit_depth: Mapped[int | None] = mapped_column(Integer, default=None)
    photometric: Mapped[str | None] = mapped_column(String(20), default=None)  # MONOCHROME2 | RGB
    channels: Mapped[int | None] = mapped_column(Integer, default=None)
    # The default display window (header window, else percentile range, else 8-bit full range).
    window_center: Mapped[float | None] = mapped_column(Float, default=None)
    window_width: Mapped[float | None] = mapped_column(Float, default=None)
    # {"header_window": [c, w] | null, "auto_window": [c, w], "full_window": [c, w], "dtype": ...,
    #  "source": {...}}: the window presets of the painter and where the pixels came from.
    pixel_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class ReadingStatus(StrEnum):
    """The status of a reading. `skipped` is a pass (no label, no map; the image comes back at the
    end of the reader's queue) and is not a read; the others are reads. `unsure` and `flagged`
    carry a comment and are listed for the project's managers."""

    # `Annotation.status` and `AnnotationRevision.status` hold the value.

    DONE = "done"
    SKIPPED = "skipped"
    UNSURE = "unsure"
    FLAGGED = "flagged"

    NEEDS_COMMENT: ClassVar[frozenset[ReadingStatus]]  # unsure, flagged


ReadingStatus.NEEDS_COMMENT = frozenset({ReadingStatus.UNSURE, ReadingStatus.FLAGGED})


class Annotation(Base):
    """One annotator's current label and saliency map for one image; history in AnnotationRevision."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("image_id", "author_id"),
        Index("ix_annotations_author_image", "author_id", "image_id"),
        Index("ix_annotations_project_updated", "project_id", "updated_at"),
        Index("ix_annotations_project_status", "project_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(String(100), default=None)
    saliency_key: Mapped[str | None] = mapped_column(String(255), default=None)  # None: no map
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # a ReadingStatus; a comment for unsure and flagged
    status: Mapped[str] = mapped_column(String(20), default=ReadingStatus.DONE)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    author: Mapped[User] = relationship()


class AnnotationRevision(Base):
    __tablename__ = "annotation_revisions"
    __table_args__ = (
        UniqueConstraint("annotation_id", "revision"),
        Index("ix_annotation_revisions_saliency_key", "saliency_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(100), default=None)
    saliency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    status: Mapped[str] = mapped_column(String(20), default=ReadingStatus.DONE)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Adjudication(Base):
    """The adjudicated label and map of one image: what training uses instead of the readers' mean.
    History in AdjudicationRevision, written with If-Match like an annotation."""

    __tablename__ = "adjudications"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), unique=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    label: Mapped[str | None] = mapped_column(String(100), default=None)
    saliency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdjudicationRevision(Base):
    __tablename__ = "adjudication_revisions"
    __table_args__ = (
        UniqueConstraint("adjudication_id", "revision"),
        Index("ix_adjudication_revisions_saliency_key", "saliency_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    adjudication_id: Mapped[int] = mapped_column(ForeignKey("adjudications.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(100), default=None)
    saliency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunStatus(StrEnum):
    """The state of a training run (`TrainingRun.status`, DESIGN.md section 5):
    queued -> running -> succeeded | failed | cancelled; a stale running run may go back to queued."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    ACTIVE: ClassVar[frozenset[RunStatus]]  # queued, running: a project has at most one such run
    FINISHED: ClassVar[frozenset[RunStatus]]  # succeeded, failed, cancelled: final, never changes again


RunStatus.ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
RunStatus.FINISHED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class TrainingRun(Base):
    """A training run. The database, not the broker, is the source of truth for its state."""

    __tablename__ = "training_runs"
    __table_args__ = (
        Index("ix_training_runs_project_status", "project_id", "status"),
        Index("ix_training_runs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED)  # a RunStatus
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # annotation revisions trained on
    error: Mapped[str | None] = mapped_column(Text, default=None)
    reason: Mapped[str] = mapped_column(String(20), default="manual")  # manual | scheduled
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The model this run produced. No foreign key: model_versions.run_id already points back, and a
    # cycle of foreign keys would make SQLite batch migrations and deletes order-dependent.
    model_id: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class TrainingEvent(Base):
    """Progress events of a run, in order, for the server-sent event stream and the curves."""

    __tablename__ = "training_events"
    __table_args__ = (Index("ix_training_events_run_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # status | progress | epoch | log
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("project_id", "version"),
        Index("ix_model_versions_project_active", "project_id", "active"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(Integer)
    artifact_key: Mapped[str] = mapped_column(String(255))
    checksum: Mapped[str] = mapped_column(String(64))
    backbone: Mapped[str] = mapped_column(String(50))
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(default=None)


class Prediction(Base):
    """A stored prediction of one model version for one project image."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_id"),
        Index("ix_predictions_model_uncertainty", "model_id", "uncertainty"),
        Index("ix_predictions_model_alignment", "model_id", "alignment"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(100))
    confidence: Mapped[float] = mapped_column(Float)
    uncertainty: Mapped[float] = mapped_column(Float)  # 1 - (p_top1 - p_top2): higher is less certain
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    heatmap_key: Mapped[str | None] = mapped_column(String(255), default=None)
    alignment: Mapped[float | None] = mapped_column(Float, default=None)  # soft IoU with consensus saliency
    alignment_detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # when `alignment` was computed: annotations changed after it make it stale (re-aligned in the
    # background, see app.services.predictions.stale_alignments)
    aligned_at: Mapped[datetime | None] = mapped_column(default=None)


class JobStatus(StrEnum):
    """The state of a background job (`Job.status`): queued -> running -> succeeded | failed; a
    succeeded job whose result was deleted by retention becomes expired."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"

    ACTIVE: ClassVar[frozenset[JobStatus]]  # queued, running


JobStatus.ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class Job(Base):
    """A background job a user asked for and polls: a model export, a batch prediction, an
    inverted-saliency sanity check. The row, not the broker, is the source of truth: its status,
    progress, and where its result lies in storage (`result_key`, content-addressed)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_project_kind", "project_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(30))  # export | predict_batch | sanity_check
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)  # a JobStatus
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result_key: Mapped[str | None] = mapped_column(String(255), default=None)
    result_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WeightsFile(Base):
    """A pretrained weights file registered with `sage-studio weights add`, kept in the object
    storage under its content-addressed key so that a worker on any machine can fetch it into its
    own `SAGE_WEIGHTS_DIR` (see app.services.weights)."""

    __tablename__ = "weights_files"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # training option `weights`
    backbone: Mapped[str] = mapped_column(String(40))
    file: Mapped[str] = mapped_column(String(120))  # torchvision-style name: <stem>-<sha256 prefix>.pth
    source: Mapped[str] = mapped_column(String(20))  # torchvision | custom
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
