"""Adjudication: a manager or adjudicator settles the readers' disagreement on an image.

The adjudicated label becomes the image's label, and the adjudicated map (when one was painted)
is the map training uses instead of the readers' mean (`app.services.datasets.dataset_entries`);
without an adjudication the mean stays. An adjudication is written like an annotation: a new
revision per save, `If-Match` with the revision last seen (409 when stale), every revision kept.
An adjudication without a map settles the label only; the readers' mean stays the training map.

The review list orders images with two or more readings by disagreement: label disagreement
first, then the lowest soft IoU between the readers' maps.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.imaging import decode_mask, encode_mask
from app.services.annotations import ANY_REVISION, read_mask, resolve_label, soft_iou
from app.services.errors import Conflict, Forbidden, Invalid
from app.services.reading import is_privileged
from app.storage import Storage
from app.tables import Adjudication, AdjudicationRevision, Annotation, Image, Project, ReadingStatus, User


def check_adjudicator(session: Session, project: Project, user: User) -> None:
    if not is_privileged(session, project.id, user):
        raise Forbidden("only the project's managers and members with the adjudicator flag may adjudicate")


def get_adjudication(session: Session, image_id: int) -> Adjudication | None:
    return session.scalar(select(Adjudication).where(Adjudication.image_id == image_id))


def author_name(session: Session, adjudication: Adjudication) -> str | None:
    """The username of the adjudication's author (None once that account was deleted)."""
    if not adjudication.author_id:
        return None
    return session.scalar(select(User.username).where(User.id == adjudication.author_id))


def disagreements(
    session: Session, project: Project, *, limit: int = 200, offset: int = 0
) -> list[dict[str, Any]]:
    """Images read by two or more readers, most disagreeing first: differing labels first, then
    the lowest mean pairwise soft IoU of their maps (images without two maps after those)."""
    labels = (
        select(
            Annotation.image_id.label("image_id"),
            func.count(func.distinct(Annotation.label)).label("n_labels"),
        )
        .where(Annotation.project_id == project.id, Annotation.status != ReadingStatus.SKIPPED)
        .group_by(Annotation.image_id)
        .subquery()
    )
    label_split = (labels.c.n_labels > 1).label("label_split")
    rows = session.execute(
        select(Image, label_split, Adjudication.revision)
        .join(labels, labels.c.image_id == Image.id)
        .outerjoin(Adjudication, Adjudication.image_id == Image.id)
        .where(Image.project_id == project.id, Image.annotation_count >= 2)
        .order_by(
            label_split.desc(),
            Image.agreement_iou.is_(None),
            Image.agreement_iou.asc(),
            Image.id,
        )
        .offset(offset)
        .limit(limit)
    ).all()
    votes: dict[int, Counter] = {}
    ids = [img.id for img, _, _ in rows]
    if ids:
        for image_id, label in session.execute(
            select(Annotation.image_id, Annotation.label).where(
                Annotation.image_id.in_(ids), Annotation.status != ReadingStatus.SKIPPED
            )
        ):
            votes.setdefault(image_id, Counter())[label or ""] += 1
    return [
        {
            "image_id": img.id,
            "name": img.original_name,
            "readers": img.annotation_count,
            "labels": dict(votes.get(img.id, {})),
            "label_disagreement": bool(split),
            "agreement_iou": img.agreement_iou,
            "adjudicated": revision is not None,
            "adjudication_revision": revision,
        }
        for img, split, revision in rows
    ]


def put_adjudication(
    session: Session,
    storage: Storage,
    image: Image,
    project: Project,
    author: User,
    *,
    label: str | None,
    saliency_png: bytes | None,
    if_match: int | None,
) -> tuple[Adjudication, bool]:
    """Save the adjudicated label and map as a new revision (commits); (adjudication, created).

    The label is required; the map is optional (none, or zero everywhere: label only). If-Match as
    for annotations: None only for the first adjudication of the image, else its current revision."""
    check_adjudicator(session, project, author)
    if label is None:
        raise Invalid("an adjudication needs the adjudicated label")
    if label not in project.labels:
        raise Conflict(f"unknown label {label!r}; the project's labels are {project.labels}")
    arr = None
    if saliency_png is not None:
        arr = decode_mask(saliency_png, image.width, image.height, what="the adjudicated map")
        if not arr.any():
            arr = None
    now = datetime.now(UTC)
    with storage.staging() as staging:
        key = staging.put_bytes(encode_mask(arr), ".png") if arr is not None else None
        session.execute(select(Image.id).where(Image.id == image.id).with_for_update())
        existing = session.scalar(
            select(Adjudication)
            .where(Adjudication.image_id == image.id)
            .execution_options(populate_existing=True)
        )
        created = existing is None
        if existing is None:
            if if_match is not None:
                session.rollback()
                raise Conflict("this image has no adjudication yet: send the first one without If-Match")
            adjudication = Adjudication(
                project_id=project.id,
                image_id=image.id,
                author_id=author.id,
                label=label,
                saliency_key=key,
                revision=1,
                created_at=now,
                updated_at=now,
            )
            session.add(adjudication)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                raise Conflict(
                    "the image was adjudicated concurrently; reload and send its revision"
                ) from None
        else:
            adjudication = existing
            if if_match is None:
                session.rollback()
                raise Conflict(
                    f"this image is already adjudicated (revision {existing.revision}); "
                    f"send If-Match: {existing.revision} to replace it",
                    headers={"ETag": f'"{existing.revision}"'},
                )
            expected = existing.revision if if_match == ANY_REVISION else if_match
            result = session.execute(
                update(Adjudication)
                .where(Adjudication.id == existing.id, Adjudication.revision == expected)
                .values(
                    revision=expected + 1, label=label, saliency_key=key, author_id=author.id, updated_at=now
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
                current = existing.revision
                session.rollback()
                raise Conflict(
                    f"stale revision: you sent If-Match {if_match} but the adjudication is at revision "
                    f"{current}; reload it and send If-Match: {current}",
                    headers={"ETag": f'"{current}"'},
                )
            session.refresh(adjudication)
        session.add(
            AdjudicationRevision(
                adjudication_id=adjudication.id,
                revision=adjudication.revision,
                label=label,
                saliency_key=key,
                author_id=author.id,
                created_at=now,
            )
        )
        image.label = label
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict("the adjudication changed concurrently; reload it and retry") from None
    return adjudication, created


def list_revisions(session: Session, adjudication: Adjudication) -> list[AdjudicationRevision]:
    return list(
        session.scalars(
            select(AdjudicationRevision)
            .where(AdjudicationRevision.adjudication_id == adjudication.id)
            .order_by(AdjudicationRevision.revision)
        )
    )


def image_label(session: Session, image: Image, project: Project, votes) -> str | None:
    """The image's label: the adjudicated one when there is an adjudication, else the majority."""
    adjudicated = session.scalar(select(Adjudication.label).where(Adjudication.image_id == image.id))
    return adjudicated or resolve_label(votes, image.import_label, project.labels)


# --- agreement per reader -------------------------------------------------------------------------


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None without items or when chance
    agreement is total (both raters always gave one and the same label)."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def reader_agreement(
    session: Session, storage: Storage, project: Project, *, max_images: int = 2000
) -> dict[str, Any]:
    """Agreement per reader pair and per reader against the adjudication: label kappa over the
    images both labelled, mean soft IoU over the images both painted (`app.services.annotations.
    soft_iou`, the same as the image agreement). Reads at most `max_images` images with two or more
    readings or an adjudication, newest first."""
    image_ids = list(
        session.scalars(
            select(Image.id)
            .where(Image.project_id == project.id, Image.annotation_count >= 2)
            .order_by(Image.id.desc())
            .limit(max_images)
        )
    )
    seen = set(image_ids)
    image_ids += [
        i
        for i in session.scalars(
            select(Adjudication.image_id).where(Adjudication.project_id == project.id).limit(max_images)
        )
        if i not in seen
    ]
    sizes = (
        {
            i: (w, h)
            for i, w, h in session.execute(
                select(Image.id, Image.width, Image.height).where(Image.id.in_(image_ids))
            )
        }
        if image_ids
        else {}
    )
    readings: dict[int, dict[str, tuple[str | None, str | None]]] = {}
    for image_id, author, label, key in (
        session.execute(
            select(Annotation.image_id, User.username, Annotation.label, Annotation.saliency_key)
            .join(User, User.id == Annotation.author_id)
            .where(Annotation.image_id.in_(image_ids), Annotation.status != ReadingStatus.SKIPPED)
        )
        if image_ids
        else []
    ):
        readings.setdefault(image_id, {})[author] = (label, key)
    adjudicated = (
        {
            i: (label, key)
            for i, label, key in session.execute(
                select(Adjudication.image_id, Adjudication.label, Adjudication.saliency_key).where(
                    Adjudication.image_id.in_(image_ids)
                )
            )
        }
        if image_ids
        else {}
    )
    cache: dict[str, np.ndarray] = {}

    def mask(key: str, image_id: int) -> np.ndarray:
        if key not in cache:
            w, h = sizes[image_id]
            cache[key] = read_mask(storage, key, w, h).astype(np.float32) / 255.0
        return cache[key]

    def compare(pairs_of: list[tuple[int, tuple, tuple]]) -> dict[str, Any]:
        la, lb, ious = [], [], []
        for image_id, (label_a, key_a), (label_b, key_b) in pairs_of:
            if label_a and label_b:
                la.append(label_a)
                lb.append(label_b)
            if key_a and key_b:
                ious.append(soft_iou(mask(key_a, image_id), mask(key_b, image_id)))
        return {
            "images": len(pairs_of),
            "kappa": cohen_kappa(la, lb),
            "labelled": len(la),
            "iou": float(np.mean(ious)) if ious else None,
            "maps": len(ious),
        }

    by_pair: dict[tuple[str, str], list] = {}
    by_reader: dict[str, list] = {}
    for image_id, reads in readings.items():
        for a, b in itertools.combinations(sorted(reads), 2):
            by_pair.setdefault((a, b), []).append((image_id, reads[a], reads[b]))
        if image_id in adjudicated:
            for reader, reading in reads.items():
                by_reader.setdefault(reader, []).append((image_id, reading, adjudicated[image_id]))
    return {
        "pairs": [{"readers": [a, b], **compare(items)} for (a, b), items in sorted(by_pair.items())],
        "vs_adjudication": [{"reader": r, **compare(items)} for r, items in sorted(by_reader.items())],
    }
