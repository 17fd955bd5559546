"""Lookups every layer repeats: a row by id or 404, and a project's active model.

Plain queries with no other service behind them, so any service (training, models, images) and
any route or page can use them without an import cycle.
"""

from __future__ import annotations

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
