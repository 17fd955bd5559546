"""Project images: upload (deduplicated by content), keyset-paginated listing, deletion, and `next`.

Files are content-addressed (app.storage); an image row's file is written to staging, the row is
committed, then the file is moved into place. Deleting rows deletes their files after the commit,
and only the files no other row still uses.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from sqlalchemy import and_, exists, func, not_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.imaging import DecodedImage, decode_image
from app.services.errors import BadRequest, Conflict, Invalid
from app.services.lookups import active_model
from app.storage import Staging, Storage
from app.tables import (
    Adjudication,
    Annotation,
    AnnotationRevision,
    Image,
    ModelVersion,
    Prediction,
    Project,
    ReadingStatus,
    User,
)
from sage import imageio

SPLITS = ("train", "val", "test")
# An image uploaded without a split has none until the project's first training run after it draws
# one (`app.services.datasets.draw_splits`), which is then kept.
DEFAULT_SPLIT = None
NEXT_POLICIES = ("sequential", "random", "uncertainty", "misalignment")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


MAX_NAME_BYTES = 255  # what every common file system allows for one name


def safe_name(name: str | None) -> str:
    """A file name reduced to its last path component, Unicode NFC, without control characters,
    at most 255 UTF-8 bytes (the extension kept). For display and export only: files are stored
    under their content hash, never under this name."""
    name = unicodedata.normalize("NFC", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    name = _UNSAFE_NAME.sub("_", name).strip()
    if name in ("", ".", ".."):
        return ""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext = name, ""
    room = MAX_NAME_BYTES - (len(ext.encode()) + 1 if ext else 0)
    stem = stem.encode()[:room].decode(errors="ignore")
    return f"{stem}.{ext}" if ext else stem


def check_label(project: Project, label: str | None) -> str | None:
    if label is None or label == "":
        return None
    if label not in project.labels:
        raise Conflict(f"unknown label {label!r}; the project's labels are {project.labels}")
    return label


def check_split(split: str | None) -> str | None:
    if split is None or split == "":
        return DEFAULT_SPLIT
    if split not in SPLITS:
        raise Invalid(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


@dataclass
class UploadedFile:
    """One uploaded file: its bytes, or `source`, a file object (a spooled upload) read only
    when needed, so a batch is never held in memory all at once."""

    name: str
    data: bytes = b""
    source: BinaryIO | None = None

    def read(self) -> bytes:
        if self.source is None:
            return self.data
        self.source.seek(0)
        return self.source.read()


def upload_images(
    session: Session,
    storage: Storage,
    project: Project,
    uploader: User | None,
    files: Sequence[UploadedFile],
    *,
    label: str | None = None,
    split: str | None = None,
    group: str | None = None,
    subtype: str | None = None,
    max_pixels: int,
) -> list[tuple[Image, bool]]:
    """Add images to a project, all or nothing (commits). Returns (image, created) per file, in order.

    Every file is decoded and verified first (ImageError 415/422 naming the file); then rows are
    inserted for bytes not yet in the project and existing rows are answered for the others
    (re-uploading is idempotent and does not change the existing row).
    """
    if not files:
        raise Invalid("no files: send one or more image files in the `files` field")
    label = check_label(project, label)
    split = check_split(split)
    decoded = []
    for f in files:  # one file's bytes in memory at a time
        data = f.read()
        image = decode_image(data, max_pixels=max_pixels, what=f"file {safe_name(f.name) or '(unnamed)'!r}")
        decoded.append((f, image, hashlib.sha256(data).hexdigest()))
        del data
    for attempt in range(2):
        try:
            return _insert_images(session, storage, project, uploader, decoded, label, split, group, subtype)
        except IntegrityError:
            # The same bytes were uploaded concurrently: the second pass answers their row.
            session.rollback()
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


def _insert_images(
    session, storage, project, uploader, decoded, label, split, group=None, subtype=None
) -> list[tuple[Image, bool]]:
    shas = {sha for _, _, sha in decoded}
    existing = {
        img.sha256: img
        for img in session.scalars(
            select(Image).where(Image.project_id == project.id, Image.sha256.in_(shas))
        )
    }
    results: list[tuple[Image, bool]] = []
    with storage.staging() as staging:
        new: dict[str, Image] = {}
        for f, image, sha in decoded:
            if sha in existing:
                results.append((existing[sha], False))
                continue
            if sha in new:
                results.append((new[sha], False))
                continue
            data = f.read()
            key = staging.put_bytes(data, image.suffix)
            row = Image(
                **pixel_fields(image, staging),
                project_id=project.id,
                sha256=sha,
                storage_key=key,
                original_name=safe_name(f.name),
                format=image.format,
                width=image.width,
                height=image.height,
                size_bytes=len(data),
                split=split,
                group=group,
                subtype=subtype,
                import_label=label,
                label=label,
                uploaded_by_id=uploader.id if uploader else None,
            )
            session.add(row)
            new[sha] = row
            results.append((row, True))
        session.flush()
        session.commit()
    return results


# --- decoded pixels -------------------------------------------------------------------------------


def pixel_fields(decoded: DecodedImage, staging: Staging | Storage) -> dict:
    """The Image columns that describe decoded pixels, the array stored (.npy) through `staging`."""
    header = decoded.header_window
    center, width = decoded.default_window()
    return {
        "array_key": staging.put_bytes(imageio.array_to_npy(decoded.pixels), ".npy"),
        "bit_depth": decoded.bit_depth,
        "photometric": decoded.photometric,
        "channels": decoded.channels,
        "window_center": float(center),
        "window_width": float(width),
        "pixel_info": {
            "header_window": [float(header[0]), float(header[1])] if header else None,
            "auto_window": [float(v) for v in decoded.auto_window()],
            "full_window": [float(v) for v in decoded.full_window()],
            "dtype": str(decoded.pixels.dtype),
            "source": {k: v for k, v in decoded.info.items() if isinstance(v, str | int | float)},
        },
    }


def pixel_array(session: Session, storage: Storage, image: Image, mmap: bool = False) -> np.ndarray:
    """The image's decoded pixels at full precision (the stored .npy; read-only memory-mapped with
    `mmap`).

    Rows from before migration 0004 (or whose array object is missing) are decoded from their
    original once here, and the array and its columns are stored and committed: a lazy backfill.
    """
    if image.array_key:
        try:
            return imageio.npy_to_array(storage.path(image.array_key), mmap=mmap)
        except FileNotFoundError:
            pass
    decoded = decode_image(storage.read_bytes(image.storage_key), max_pixels=2**62, what=f"image {image.id}")
    for column, value in pixel_fields(decoded, storage).items():
        setattr(image, column, value)
    session.commit()
    return decoded.pixels


def decoded_of(session: Session, storage: Storage, image: Image) -> imageio.DecodedArray:
    """The stored pixels with their metadata, as the decoder gave them at upload (for prediction)."""
    pixels = pixel_array(session, storage, image)
    header = (image.pixel_info or {}).get("header_window")
    return imageio.DecodedArray(
        pixels,
        image.format,
        int(image.bit_depth or 8),
        image.photometric or ("RGB" if pixels.ndim == 3 else "MONOCHROME2"),
        (float(header[0]), float(header[1])) if header else None,
    )


def display_window(image: Image) -> tuple[float, float]:
    """The image's default window (center, width); rows not yet backfilled: the 8-bit full range."""
    if image.window_center is None or image.window_width is None:
        return 128.0, 256.0
    return float(image.window_center), float(image.window_width)


class _RenderCache:
    """Recent display renderings by (content hash, window, invert), up to `budget` bytes in total."""

    def __init__(self, budget: int = 128 * 1024 * 1024) -> None:
        self.budget = budget
        self.items: OrderedDict[tuple, bytes] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self.lock:
            if key in self.items or len(data) > self.budget // 4:
                return
            self.items[key] = data
            self.size += len(data)
            while self.size > self.budget:
                _, old = self.items.popitem(last=False)
                self.size -= len(old)


RENDERS = _RenderCache()


def display_png(
    session: Session,
    storage: Storage,
    image: Image,
    center: float | None = None,
    width: float | None = None,
    invert: bool = False,
) -> tuple[bytes, tuple[float, float]]:
    """The image rendered through a window as an 8-bit PNG at full size, and the window used.

    No window given: the image's default window; only one of center and width given: the other
    from the default window (a viewer adjusting brightness or contrast alone). Renderings are cached per content hash and window.
    Memory is bounded: the stored array is memory-mapped and rendered a block of rows at a time
    (`imageio.render_8bit`), so a request holds the 8-bit result, not float copies of the image.
    """
    if center is None or width is None:
        if image.array_key is None:
            pixel_array(session, storage, image)  # backfill first, so the default window is known
        default_center, default_width = display_window(image)
        center = default_center if center is None else center
        width = default_width if width is None else width
    key = (image.sha256, float(center), float(width), bool(invert))
    cached = RENDERS.get(key)
    if cached is not None:
        return cached, (center, width)
    pixels = pixel_array(session, storage, image, mmap=True)
    data = imageio.encode_png(imageio.render_8bit(pixels, center, width, invert))
    del pixels
    RENDERS.put(key, data)
    return data, (center, width)


# --- listing ---------------------------------------------------------------------------------------


CURSOR_PATTERN = r"^[0-9]{1,10}$"  # the last id of the previous page, in decimal
MAX_CURSOR_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL


def encode_cursor(last_id: int) -> str:
    """The cursor after `last_id`: its decimal digits. Any value of `CURSOR_PATTERN` is a valid
    cursor (the page after that id, maybe empty), so the schema states the whole contract."""
    return str(last_id)


def decode_cursor(cursor: str) -> int:
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise BadRequest("invalid cursor: pass back the `next_cursor` of the previous page unchanged")
    return min(int(cursor), MAX_CURSOR_ID)  # past the last possible id: an empty page


def _done_by(user_id: int):
    return exists().where(Annotation.author_id == user_id, Annotation.image_id == Image.id)


def list_images(
    session: Session,
    project: Project,
    user: User,
    *,
    cursor: str | None = None,
    limit: int = 50,
    labelled: bool | None = None,
    annotated: bool | None = None,
    split: str | None = None,
    annotated_by_me: bool | None = None,
    label: str | None = None,
    blind: bool = False,
    reader_id: int | None = None,
    status: str | None = None,
    label_disagreement: bool | None = None,
    max_agreement: float | None = None,
    prediction: str | None = None,
    min_uncertainty: float | None = None,
) -> tuple[list[Image], str | None]:
    """One page of the project's images in id order (keyset pagination) and the next cursor.

    `blind`: the caller reads blind, so `label` matches the readers' label only on images they
    have read themselves and the import label elsewhere (the filter must not reveal others' labels)."""
    q = select(Image).where(Image.project_id == project.id)
    if cursor:
        q = q.where(Image.id > decode_cursor(cursor))
    if labelled is not None:
        q = q.where(Image.label.is_not(None) if labelled else Image.label.is_(None))
    if annotated is not None:
        q = q.where(Image.annotation_count > 0 if annotated else Image.annotation_count == 0)
    if split is not None:
        q = q.where(Image.split == check_split(split))
    if label is not None and blind:
        read = exists().where(
            Annotation.author_id == user.id,
            Annotation.image_id == Image.id,
            Annotation.status != ReadingStatus.SKIPPED,
        )
        q = q.where(or_(and_(read, Image.label == label), and_(not_(read), Image.import_label == label)))
    elif label is not None:
        q = q.where(Image.label == label)
    if annotated_by_me is not None:
        q = q.where(_done_by(user.id) if annotated_by_me else not_(_done_by(user.id)))
    q = _study_filters(
        session, project, q, reader_id, status, label_disagreement, max_agreement, prediction, min_uncertainty
    )
    rows = list(session.scalars(q.order_by(Image.id).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def recent_images(session: Session, project_id: int, limit: int) -> list[Image]:
    """The project's `limit` newest images, newest first."""
    return list(
        session.scalars(
            select(Image).where(Image.project_id == project_id).order_by(Image.id.desc()).limit(limit)
        )
    )


def neighbours(session: Session, project_id: int, image_id: int) -> dict[str, int | None]:
    """The ids of the project's images before and after `image_id` (None at either end) and the
    image's 1-based position in id order: the painter's and the review page's previous/next."""
    prev_id = session.scalar(
        select(Image.id)
        .where(Image.project_id == project_id, Image.id < image_id)
        .order_by(Image.id.desc())
        .limit(1)
    )
    next_id = session.scalar(
        select(Image.id)
        .where(Image.project_id == project_id, Image.id > image_id)
        .order_by(Image.id)
        .limit(1)
    )
    position = session.scalar(
        select(func.count(Image.id)).where(Image.project_id == project_id, Image.id <= image_id)
    )
    return {"prev": prev_id, "next": next_id, "position": position}


def _study_filters(
    session, project, q, reader_id, status, label_disagreement, max_agreement, prediction, min_uncertainty
):
    """The image browser's filters (issue 12): read by whom, a reading status, label disagreement,
    map agreement at most, the active model's prediction right or wrong, uncertainty at least."""
    if reader_id is not None or status is not None:
        cond = [Annotation.image_id == Image.id]
        if reader_id is not None:
            cond.append(Annotation.author_id == reader_id)
        if status is not None:
            cond.append(Annotation.status == status)
        q = q.where(exists().where(*cond))
    if label_disagreement is not None:
        n_labels = (
            select(func.count(func.distinct(Annotation.label)))
            .where(Annotation.image_id == Image.id, Annotation.status != ReadingStatus.SKIPPED)
            .scalar_subquery()
        )
        q = q.where(n_labels > 1 if label_disagreement else n_labels <= 1)
    if max_agreement is not None:
        q = q.where(Image.agreement_iou <= max_agreement)
    if prediction is not None or min_uncertainty is not None:
        model = active_model(session, project.id)
        model_id = model.id if model is not None else -1  # no active model: no prediction matches
        q = q.join(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_id == model_id))
        if prediction == "correct":
            q = q.where(Image.label.is_not(None), Prediction.label == Image.label)
        elif prediction == "wrong":
            q = q.where(Image.label.is_not(None), Prediction.label != Image.label)
        if min_uncertainty is not None:
            q = q.where(Prediction.uncertainty >= min_uncertainty)
    return q


# --- next --------------------------------------------------------------------------------------------


def _open_for(project: Project, user: User) -> list:
    """Conditions of an image `next` may give the reader: they neither read nor skipped it, and it
    still has fewer readers than the project wants (`readers_per_image`; skips are not reads)."""
    return [not_(_done_by(user.id)), Image.annotation_count < _wanted(project)]


def _wanted(project: Project):
    """Readers an image wants: its own `readers_wanted` (set by re-queueing), else the project's k."""
    return func.coalesce(Image.readers_wanted, max(1, project.readers_per_image or 1))


def _first_unfinished(session: Session, project: Project, user: User, *conditions) -> Image | None:
    return session.scalar(
        select(Image)
        .where(Image.project_id == project.id, *_open_for(project, user), *conditions)
        .order_by(Image.id)
        .limit(1)
    )


def _first_skipped(session: Session, project: Project, user: User, after: int | None) -> Image | None:
    """The reader's skipped images come back at the end of their queue, the oldest skip first
    (the image just skipped, `after`, last of all), while they still need readers."""
    q = (
        select(Image)
        .join(Annotation, and_(Annotation.image_id == Image.id, Annotation.author_id == user.id))
        .where(
            Image.project_id == project.id,
            Annotation.status == ReadingStatus.SKIPPED,
            Image.annotation_count < _wanted(project),
        )
    )
    if after is not None:
        first = session.scalar(q.where(Image.id != after).order_by(Annotation.updated_at, Image.id).limit(1))
        if first is not None:
            return first
    return session.scalar(q.order_by(Annotation.updated_at, Image.id).limit(1))


def _by_prediction(
    session: Session, project: Project, user: User, policy: str, after: int | None
) -> Image | None:
    """The unfinished image the active model is least sure about (uncertainty) or whose heatmap
    agrees least with the human consensus (misalignment); None without an active model or
    predictions for the remaining images. The worker fills `predictions`."""
    model = active_model(session, project.id)
    if model is None:
        return None
    model_id = model.id
    if policy == "uncertainty":
        order: tuple[Any, ...] = (Prediction.uncertainty.desc(), Image.id)
        cond = []
    else:
        order = (Prediction.alignment.asc(), Image.id)
        cond = [Prediction.alignment.is_not(None)]
    q = (
        select(Image)
        .join(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_id == model_id))
        .where(Image.project_id == project.id, *_open_for(project, user), *cond)
    )
    if after is not None:
        q = q.where(Image.id != after)
    return session.scalar(q.order_by(*order).limit(1))


def next_image(
    session: Session, project: Project, user: User, *, policy: str | None = None, after: int | None = None
) -> tuple[Image | None, str]:
    """The caller's next image to read; (image, policy used). Never one they already read, nor one
    that already has the project's `readers_per_image` readers; the images they skipped come back
    once nothing else is left (`_first_skipped`).

    sequential: the first unfinished image after `after` (the image being skipped), wrapping
    around; random: a uniformly random pivot id, then the first unfinished image from there;
    uncertainty / misalignment: ordered by the active model's stored predictions, falling back
    to sequential when there is no active model or no prediction left.
    """
    image, used = _next_unread(session, project, user, policy=policy, after=after)
    if image is None:
        image = _first_skipped(session, project, user, after)
    return image, used


def _next_unread(
    session: Session, project: Project, user: User, *, policy: str | None, after: int | None
) -> tuple[Image | None, str]:
    policy = policy or project.next_policy or "sequential"
    if policy not in NEXT_POLICIES:
        raise Invalid(f"unknown policy {policy!r}; use one of {', '.join(NEXT_POLICIES)}")
    if policy in ("uncertainty", "misalignment"):
        image = _by_prediction(session, project, user, policy, after)
        if image is not None:
            return image, policy
        policy = "sequential"
    if policy == "random":
        # Two queries: SQLite answers a lone min() or max() from the index, not both together.
        lo = session.scalar(select(func.min(Image.id)).where(Image.project_id == project.id))
        hi = session.scalar(select(func.max(Image.id)).where(Image.project_id == project.id))
        if lo is None or hi is None:
            return None, policy
        pivot = random.randint(lo, hi)
        skip = [Image.id != after] if after is not None else []
        image = (
            _first_unfinished(session, project, user, Image.id >= pivot, *skip)
            or _first_unfinished(session, project, user, Image.id < pivot, *skip)
            or (_first_unfinished(session, project, user) if after is not None else None)
        )
        return image, policy
    if after is not None:
        image = _first_unfinished(session, project, user, Image.id > after) or _first_unfinished(
            session, project, user
        )
    else:
        image = _first_unfinished(session, project, user)
    return image, "sequential"


# --- deletion ----------------------------------------------------------------------------------------


def object_keys_of_images(session: Session, image_ids: Iterable[int]) -> set[str]:
    """Every storage key the given images' rows use (files, imported maps, annotation revisions)."""
    ids = list(image_ids)
    keys: set[str] = set()
    for chunk in _chunks(ids, 500):
        for key, imp, arr in session.execute(
            select(Image.storage_key, Image.import_saliency_key, Image.array_key).where(Image.id.in_(chunk))
        ):
            keys.add(key)
            if imp:
                keys.add(imp)
            if arr:
                keys.add(arr)
        keys.update(
            session.scalars(
                select(AnnotationRevision.saliency_key)
                .join(Annotation, Annotation.id == AnnotationRevision.annotation_id)
                .where(Annotation.image_id.in_(chunk), AnnotationRevision.saliency_key.is_not(None))
            )
        )
    return keys


def delete_image(session: Session, storage: Storage, image: Image) -> None:
    """Delete an image with its annotations and predictions (commits), then its unused files."""
    keys = object_keys_of_images(session, [image.id])
    session.delete(image)
    session.commit()
    delete_unreferenced(session, storage, keys)


def referenced_keys(session: Session, keys: Sequence[str]) -> set[str]:
    """Those of `keys` that some row still uses."""
    used: set[str] = set()
    for chunk in _chunks(list(keys), 500):
        used.update(session.scalars(select(Image.storage_key).where(Image.storage_key.in_(chunk))))
        used.update(session.scalars(select(Image.array_key).where(Image.array_key.in_(chunk))))
        used.update(
            session.scalars(select(Image.import_saliency_key).where(Image.import_saliency_key.in_(chunk)))
        )
        used.update(
            session.scalars(
                select(AnnotationRevision.saliency_key).where(AnnotationRevision.saliency_key.in_(chunk))
            )
        )
        used.update(session.scalars(select(Prediction.heatmap_key).where(Prediction.heatmap_key.in_(chunk))))
        used.update(
            session.scalars(select(ModelVersion.artifact_key).where(ModelVersion.artifact_key.in_(chunk)))
        )
    return used


def delete_unreferenced(session: Session, storage: Storage, keys: Iterable[str]) -> int:
    """Delete the files of `keys` that no row uses any more (call after the commit); returns the count.

    Race-free against a writer of the same bytes: a file is kept if a writer touched it meanwhile
    or a row uses it now (`Storage.remove_if_unused`)."""
    keys = [k for k in set(keys) if k]
    if not keys:
        return 0
    used = referenced_keys(session, keys)
    session.rollback()  # end the read transaction: nothing to keep
    removed = 0
    for key in keys:
        if key in used:
            continue

        def in_use(key: str = key) -> bool:
            try:
                return bool(referenced_keys(session, [key]))
            finally:
                session.rollback()

        try:
            removed += storage.remove_if_unused(key, in_use)
        except ValueError:
            continue  # not one of our keys (e.g. a model artifact path): not ours to delete
    return removed


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def set_image_fields(
    session: Session,
    image: Image,
    *,
    split: str | None = None,
    import_label: str | None = None,
    clear_import_label: bool = False,
) -> Image:
    """Change an image's split or import label (commits); the derived label follows."""
    from app.services.annotations import resolve_label

    project = session.get_one(Project, image.project_id)
    if split is not None:
        image.split = check_split(split)
    if clear_import_label:
        image.import_label = None
    elif import_label is not None:
        image.import_label = check_label(project, import_label)
    votes = session.scalars(
        select(Annotation.label).where(
            Annotation.image_id == image.id, Annotation.status != ReadingStatus.SKIPPED
        )
    ).all()
    adjudicated = session.scalar(select(Adjudication.label).where(Adjudication.image_id == image.id))
    image.label = adjudicated or resolve_label(votes, image.import_label, project.labels)
    session.commit()
    return image
