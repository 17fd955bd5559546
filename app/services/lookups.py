"""Lookups every layer repeats: a row by id or 404, and a project's (or several projects') active model.

Plain queries with no other service behind them, so any service (training, models, images) and
any route or page can use them without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services.errors import NotFound
from app.tables import ModelVersion

T = TypeVar("T")


def get_or_404(session: Session, table: type[T], row_id: int, what: str) -> T:
    """The row of `table` with primary key `row_id`, or NotFound (404, "no <what> <id>")."""
    row = session.get(table, row_id)
    if row is None:
        raise NotFound(f"no {what} {row_id}")
    return row


def active_model(session: Session, project_id: int) -> ModelVersion | None:
    """The project's active model version (at most one is active; None before the first)."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.project_id == project_id, ModelVersion.active.is_(True))
    ).first()


def active_models(session: Session, project_ids: Sequence[int]) -> dict[int, ModelVersion]:
    """The active model version of each of the projects that has one, in one query."""
    if not project_ids:
        return {}
    rows = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.project_id.in_(project_ids), ModelVersion.active.is_(True))
        .order_by(ModelVersion.id)
    )
    models: dict[int, ModelVersion] = {}
    for model in rows:
        models.setdefault(model.project_id, model)
    return models
