"""decoded pixel arrays and image metadata (bit depth, photometric, channels, default window)

Existing rows keep NULL here and are backfilled lazily: the first display, training snapshot or
prediction that needs an image's pixels decodes its original once and fills these columns
(app.services.images.pixel_array), so the migration itself touches no file and runs in O(1).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("array_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("bit_depth", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("photometric", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("channels", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("window_center", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("window_width", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("pixel_info", sa.JSON(), nullable=True))
        batch_op.create_index("ix_images_array_key", ["array_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_array_key")
        for column in (
            "pixel_info",
            "window_width",
            "window_center",
            "channels",
            "photometric",
            "bit_depth",
            "array_key",
        ):
            batch_op.drop_column(column)
