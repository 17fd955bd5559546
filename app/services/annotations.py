"""Annotations: each annotator's label and soft saliency map per image, their history, consensus and agreement.

Writes are optimistic: `put_annotation` takes the revision the client last saw (HTTP If-Match)
and refuses a stale one with Conflict (409), so two annotators' browsers, or two tabs, never
silently overwrite each other. Every revision is kept in `annotation_revisions`, and the saliency
files of old revisions are never deleted while the annotation exists.

After each write the image's derived columns (`label`, `annotation_count`, `agreement_iou`,
`agreement_r`) are recomputed in the same transaction, under a row lock on the image, so list
filters, `next` and the project summary stay index-only.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.imaging import decode_mask, encode_mask
from app.services.errors import Conflict, Invalid
from app.storage import Storage
from app.tables import Adjudication, Annotation, AnnotationRevision, Image, Project, ReadingStatus, User
from sage.agreement import pearson, soft_iou, unit_map

ANY_REVISION = -1  # If-Match: *

MAX_COMMENT = 2000


@dataclass
class AgreementScores:
    iou: float | None  # mean pairwise soft IoU: sum(min(a, b)) / sum(max(a, b))
    pearson: float | None  # mean pairwise Pearson r (sage.agreement's rule for constant maps)
    pairs: int

    def as_dict(self) -> dict:
        return {"iou": self.iou, "pearson": self.pearson, "pairs": self.pairs}


def agreement(maps: Sequence[np.ndarray]) -> AgreementScores:
    """Mean pairwise soft IoU and Pearson r of soft maps (uint8 0..255 or float 0..1), by the one
    definition in sage.agreement (edge cases: empty and constant maps).

    Fewer than two maps: no pairs, both scores None.
    """
    floats = [unit_map(m) for m in maps]
    if len(floats) < 2:
        return AgreementScores(None, None, 0)
    pairs = list(itertools.combinations(floats, 2))
    return AgreementScores(
        iou=float(np.mean([soft_iou(a, b) for a, b in pairs])),
        pearson=float(np.mean([pearson(a, b) for a, b in pairs])),
        pairs=len(pairs),
    )


def read_mask(storage: Storage, key: str, width: int, height: int) -> np.ndarray:
    """A stored saliency map as a (height, width) uint8 array (validated when it was written)."""
    return decode_mask(storage.read_bytes(key), width, height, what=f"stored saliency map {key}")


def current_maps(session: Session, storage: Storage, image: Image) -> list[np.ndarray]:
    """The annotators' current maps of an image, in annotation id order."""
    keys = session.scalars(
        select(Annotation.saliency_key)
        .where(Annotation.image_id == image.id, Annotation.saliency_key.is_not(None))
        .order_by(Annotation.id)
    ).all()
    return [read_mask(storage, k, image.width, image.height) for k in keys if k is not None]


def consensus_map(session: Session, storage: Storage, image: Image) -> np.ndarray | None:
    """The consensus saliency of an image: float32 (height, width) in [0, 1], or None.

    It is the mean of all annotators' current soft maps; when no annotator painted one, the map
    that came with the image's import; else None.
    """
    maps = current_maps(session, storage, image)
    if not maps and image.import_saliency_key:
        maps = [read_mask(storage, image.import_saliency_key, image.width, image.height)]
    if not maps:
        return None
    return consensus_of(maps)


def consensus_of(maps: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of uint8 maps as float32 in [0, 1]."""
    total = np.zeros(maps[0].shape, dtype=np.float32)
    for m in maps:
        total += m.astype(np.float32)
    return total / (255.0 * len(maps))


def consensus_png(session: Session, storage: Storage, image: Image) -> bytes | None:
    """The consensus as an 8-bit grayscale PNG (what `/saliency.png` and exports serve), or None."""
    arr = consensus_map(session, storage, image)
    return None if arr is None else encode_mask(arr)


def resolve_label(votes: Sequence[str | None], import_label: str | None, labels: Sequence[str]) -> str | None:
    """The image's label: the most frequent of the annotators' labels, else the import label.

    Ties go to the import label when it is among the tied, else to the label listed first in the
    project (a stable, documented choice rather than an arbitrary one).
    """
    counts = Counter(v for v in votes if v)
    if not counts:
        return import_label
    top = max(counts.values())
    tied = [label for label, n in counts.items() if n == top]
    if len(tied) == 1:
        return tied[0]
    if import_label in tied:
        return import_label
    order = {label: i for i, label in enumerate(labels)}
    return min(tied, key=lambda label: (order.get(label, len(order)), label))


def refresh_image(
    session: Session,
    storage: Storage,
    image: Image,
    project: Project,
    pending: dict[str, np.ndarray] | None = None,
) -> None:
    """Recompute the image's label, annotation count and agreement (flushes, does not commit).

    `pending` holds maps written in this transaction but not yet in storage, by key.
    """
    pending = pending or {}
    rows = session.execute(
        select(Annotation.label, Annotation.saliency_key)
        .where(Annotation.image_id == image.id, Annotation.status != ReadingStatus.SKIPPED)
        .order_by(Annotation.id)
    ).all()
    maps = []
    for _, key in rows:
        if key is None:
            continue
        maps.append(pending[key] if key in pending else read_mask(storage, key, image.width, image.height))
    scores = agreement(maps)
    image.annotation_count = len(rows)
    adjudicated = session.scalar(select(Adjudication.label).where(Adjudication.image_id == image.id))
    image.label = adjudicated or resolve_label(
        [label for label, _ in rows], image.import_label, project.labels
    )
    image.agreement_iou = scores.iou
    image.agreement_r = scores.pearson
    session.flush()


def parse_if_match(value: str | None) -> int | None:
    """The revision in an If-Match header (`3`, `"3"` or `W/"3"`; `*` means any), or None if absent."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text == "*":
        return ANY_REVISION
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit() or len(text) > 9:
        raise Invalid(f"If-Match must be the annotation's revision number (got {value[:40]!r})")
    return int(text)


def check_annotation(
    project: Project,
    image: Image,
    label: str | None,
    saliency_png: bytes | None,
    status: str,
    comment: str | None,
) -> tuple[np.ndarray | None, str | None]:
    """Validate an annotation before anything is written: (the map, or None for no map; the comment).

    Raises Conflict (409) for an unknown label; Invalid (422) for an unknown status, a bad map, a skip that carries a label or
    map, an unsure or flagged status without a comment, or a done annotation with neither a label
    nor a painted map."""
    if status not in tuple(ReadingStatus):
        raise Invalid(f"unknown status {status!r}; use one of {', '.join(ReadingStatus)}")
    if label is not None and label not in project.labels:
        raise Conflict(f"unknown label {label!r}; the project's labels are {project.labels}")
    if label is not None and label in (project.retired_labels or []):
        raise Invalid(f"the label {label!r} is retired: new readings use one of the other labels")
    comment = (comment or "").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT:
        raise Invalid(f"the comment is {len(comment)} characters; at most {MAX_COMMENT}")
    arr = None
    if saliency_png is not None:
        arr = decode_mask(saliency_png, image.width, image.height, what="the saliency map")
        if not arr.any():
            arr = None  # nothing painted: label only, no map
    if status == ReadingStatus.SKIPPED:
        if label is not None or arr is not None:
            raise Invalid("a skipped image carries no label and no map; send status=skipped alone")
    elif status in ReadingStatus.NEEDS_COMMENT:
        if comment is None:
            raise Invalid(f"status '{status}' needs a comment saying why")
    elif label is None and arr is None:
        if saliency_png is not None:
            raise Invalid("the map is empty (zero everywhere) and there is no label: pick a label or paint")
        raise Invalid("send a label, a saliency map, or both")
    return arr, comment


def put_annotation(
    session: Session,
    storage: Storage,
    image: Image,
    project: Project,
    author: User,
    *,
    label: str | None,
    saliency_png: bytes | None,
    if_match: int | None,
    status: str = ReadingStatus.DONE,
    comment: str | None = None,
) -> tuple[Annotation, bool]:
    """Store the author's label, saliency map and status for the image as a new revision (commits).

    The whole annotation is replaced: an omitted map or label becomes none. A map that is zero
    everywhere is "no map" too (label only): it is not stored, so it can neither teach training
    that nothing matters nor dilute the consensus. `if_match` is the revision the client last saw:
    None only for the first annotation of this author on this image, `ANY_REVISION` to overwrite
    whatever is there. A stale or missing revision raises Conflict and writes nothing.
    Returns (annotation, created).
    """
    arr, comment = check_annotation(project, image, label, saliency_png, status, comment)
    now = datetime.now(UTC)
    with storage.staging() as staging:
        key = staging.put_bytes(encode_mask(arr), ".png") if arr is not None else None
        # Serialise writers of this image (PostgreSQL; SQLite serialises all writers anyway), then
        # read the annotation fresh: the check below sees every committed revision.
        session.execute(select(Image.id).where(Image.id == image.id).with_for_update())
        existing = session.scalar(
            select(Annotation)
            .where(Annotation.image_id == image.id, Annotation.author_id == author.id)
            .execution_options(populate_existing=True)
        )
        created = existing is None
        if existing is None:
            if if_match is not None:
                session.rollback()
                raise Conflict(
                    "you have no annotation on this image yet: send the first one without If-Match"
                )
            annotation = Annotation(
                project_id=project.id,
                image_id=image.id,
                author_id=author.id,
                label=label,
                saliency_key=key,
                status=status,
                comment=comment,
                revision=1,
                created_at=now,
                updated_at=now,
            )
            session.add(annotation)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                raise Conflict(
                    "your annotation of this image was created concurrently; reload it and send its revision in If-Match"
                ) from None
        else:
            annotation = existing
            if if_match is None:
                session.rollback()
                raise Conflict(
                    f"you already annotated this image (revision {existing.revision}); "
                    f"send If-Match: {existing.revision} to replace it",
                    headers={"ETag": f'"{existing.revision}"'},
                )
            expected = existing.revision if if_match == ANY_REVISION else if_match
            result = session.execute(
                update(Annotation)
                .where(Annotation.id == existing.id, Annotation.revision == expected)
                .values(
                    revision=expected + 1,
                    label=label,
                    saliency_key=key,
                    status=status,
                    comment=comment,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult; typed as Result
                current = existing.revision
                session.rollback()
                raise Conflict(
                    f"stale revision: you sent If-Match {if_match} but the annotation is at revision "
                    f"{current}; reload it, merge, and send If-Match: {current}",
                    headers={"ETag": f'"{current}"'},
                )
            session.refresh(annotation)
        session.add(
            AnnotationRevision(
                annotation_id=annotation.id,
                revision=annotation.revision,
                label=label,
                saliency_key=key,
                status=status,
                comment=comment,
                author_id=author.id,
                created_at=now,
            )
        )
        try:
            refresh_image(
                session, storage, image, project, pending={key: arr} if key and arr is not None else None
            )
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict("the annotation changed concurrently; reload it and retry") from None
    return annotation, created


def annotation_of(session: Session, image_id: int, author_id: int) -> Annotation | None:
    """The author's annotation of the image (any status), or None."""
    return session.scalar(
        select(Annotation).where(Annotation.image_id == image_id, Annotation.author_id == author_id)
    )


def images_annotated_by(session: Session, author_id: int, image_ids: Sequence[int]) -> set[int]:
    """Those of `image_ids` the author has an annotation of (any status, `skipped` included)."""
    if not image_ids:
        return set()
    return set(
        session.scalars(
            select(Annotation.image_id).where(
                Annotation.author_id == author_id, Annotation.image_id.in_(image_ids)
            )
        )
    )


def list_annotations(session: Session, image: Image) -> list[Annotation]:
    return list(
        session.scalars(select(Annotation).where(Annotation.image_id == image.id).order_by(Annotation.id))
    )


def list_revisions(session: Session, annotation: Annotation) -> list[AnnotationRevision]:
    return list(
        session.scalars(
            select(AnnotationRevision)
            .where(AnnotationRevision.annotation_id == annotation.id)
            .order_by(AnnotationRevision.revision)
        )
    )


def get_revision(session: Session, annotation: Annotation, revision: int) -> AnnotationRevision | None:
    return session.scalar(
        select(AnnotationRevision).where(
            AnnotationRevision.annotation_id == annotation.id, AnnotationRevision.revision == revision
        )
    )
