"""hardening: session epochs, API token scopes, retrain errors, SQLite AUTOINCREMENT (ids never reused)

Revision ID: 0006
Revises: 0008
Create Date: 2026-12-02 04:00:00

On SQLite every table is rebuilt with AUTOINCREMENT, so the id of a deleted row (a project, an
image, a model version) is never handed to a new row: a URL, cache entry or log line that named
the old id can never silently point at different data. PostgreSQL sequences never reuse ids already.
The rebuild runs with foreign keys off (migrations/env.py), so dropping the old copy of a parent
table cascades nothing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sqlite_tables() -> list[str]:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return []
    names = sa.inspect(bind).get_table_names()
    return [name for name in names if name != "alembic_version" and not name.startswith("sqlite_")]


def _rebuild(autoincrement: bool) -> None:
    for name in _sqlite_tables():
        with op.batch_alter_table(
            name, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_epoch", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=10), server_default="write", nullable=False))
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retrain_error", sa.Text(), nullable=True))
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("retrain_error")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("scope")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("session_epoch")
