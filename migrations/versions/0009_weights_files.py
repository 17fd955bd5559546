"""weights_files: pretrained weights registered in the object storage for workers on any machine

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "weights_files",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("backbone", sa.String(length=40), nullable=False),
        sa.Column("file", sa.String(length=120), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_weights_files")),
    )


def downgrade() -> None:
    op.drop_table("weights_files")
