"""Stored predictions: one row per (image, model version), written by the worker after activation,
read by the image page, the predictions gallery and `next` (uncertainty / misalignment ordering)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import Adjudication, Annotation, Image, Prediction, utcnow

SORTS = ("uncertainty", "misalignment", "confidence", "image")


def uncertainty(probabilities: dict[str, float]) -> float:
    """1 - (p_top1 - p_top2): 0 for a certain answer, 1 for a tie between the two best labels."""
    top = sorted(probabilities.values(), reverse=True)
    if not top:
        return 1.0
    second = top[1] if len(top) > 1 else 0.0
    return float(1.0 - (top[0] - second))


def store_prediction(
    session: Session,
    *,
    image_id: int,
    model_id: int,
    label: str,
    probabilities: dict[str, float],
    heatmap_key: str | None,
    alignment: dict[str, float] | None,
) -> Prediction:
    """Insert or replace the prediction of `model_id` for `image_id` (the caller commits)."""
    row = session.scalars(
        select(Prediction).where(Prediction.image_id == image_id, Prediction.model_id == model_id)
    ).first()
    if row is None:
        row = Prediction(image_id=image_id, model_id=model_id)
        session.add(row)
    row.label = label
    row.probabilities = {k: float(v) for k, v in probabilities.items()}
    row.confidence = float(probabilities.get(label, max(probabilities.values(), default=0.0)))
    row.uncertainty = uncertainty(probabilities)
    row.heatmap_key = heatmap_key
    set_alignment(row, alignment)
    return row


def set_alignment(row: Prediction, alignment: dict[str, float] | None) -> None:
    """Store the heatmap's alignment with the consensus map (None: the image has no map)."""
    row.alignment = (
        float(alignment["soft_iou"]) if alignment and alignment.get("soft_iou") is not None else None
    )
    row.alignment_detail = {k: (None if v is None else float(v)) for k, v in (alignment or {}).items()}
    row.aligned_at = utcnow()


def images_without_prediction(
    session: Session, project_id: int, model_id: int, limit: int = 10_000
) -> list[int]:
    """Ids of the project's images that have no stored prediction of `model_id` (id order)."""
    predicted = select(Prediction.image_id).where(Prediction.model_id == model_id)
    return list(
        session.scalars(
            select(Image.id)
            .where(Image.project_id == project_id, Image.id.not_in(predicted))
            .order_by(Image.id)
            .limit(limit)
        )
    )


def stale_alignments(session: Session, model_id: int, limit: int = 1000) -> list[int]:
    """Ids of predictions of `model_id` whose image's annotations or adjudication changed after the
    alignment was computed (the map it is compared with may differ now)."""
    changed = (
        select(Annotation.id)
        .where(
            Annotation.image_id == Prediction.image_id,
            (Prediction.aligned_at.is_(None)) | (Annotation.updated_at > Prediction.aligned_at),
        )
        .exists()
    ) | (
        select(Adjudication.id)
        .where(
            Adjudication.image_id == Prediction.image_id,
            (Prediction.aligned_at.is_(None)) | (Adjudication.updated_at > Prediction.aligned_at),
        )
        .exists()
    )
    return list(
        session.scalars(
            select(Prediction.id)
            .where(Prediction.model_id == model_id, Prediction.heatmap_key.is_not(None), changed)
            .order_by(Prediction.id)
            .limit(limit)
        )
    )


def prediction_for(session: Session, image_id: int, model_id: int) -> Prediction | None:
    return session.scalars(
        select(Prediction).where(Prediction.image_id == image_id, Prediction.model_id == model_id)
    ).first()


def list_predictions(
    session: Session,
    project_id: int,
    model_id: int,
    *,
    sort: str = "uncertainty",
    limit: int = 50,
    offset: int = 0,
    label: str | None = None,
) -> list[tuple[Prediction, Image]]:
    """A page of the model's predictions over the project's images, most useful to review first:
    `uncertainty` (least certain first), `misalignment` (heatmap least like the human saliency
    first; images without saliency last), `confidence` (most confident first), `image` (id order)."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; choose one of: {', '.join(SORTS)}")
    query = (
        select(Prediction, Image)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.model_id == model_id, Image.project_id == project_id)
    )
    if label is not None:
        query = query.where(Prediction.label == label)
    orders: dict[str, list[Any]] = {
        "uncertainty": [Prediction.uncertainty.desc()],
        "misalignment": [Prediction.alignment.is_(None), Prediction.alignment.asc()],
        "confidence": [Prediction.confidence.desc()],
        "image": [],
    }
    order = orders[sort]
    query = query.order_by(*order, Prediction.image_id).limit(limit).offset(offset)
    return [(p, i) for p, i in session.execute(query).all()]
