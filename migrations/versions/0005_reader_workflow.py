"""reader workflow: no-map annotations, statuses, k readers, blind mode, adjudication

Revision ID: 0005
Revises: 0007
Create Date: 2026-12-02 03:50:00

Schema: annotation (and revision) `status` and `comment`; project `readers_per_image`,
`blind_mode` and `retired_labels`; image `readers_wanted` (a re-queued image's own k); member `adjudicator`; the `adjudications` and `adjudication_revisions` tables.

Data: an all-zero saliency map now means "no map" (label only). Every stored annotation map,
revision map and imported map that is all zero is replaced by none, and the images they belonged
to get their agreement recomputed from the maps that remain. Maps are read through the storage of
the settings passed by `app.db.upgrade_to_head` (else the environment's); a map whose file is
missing is left as it is.
"""

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from alembic import context, op

revision: str = "0005"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("readers_per_image", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("blind_mode", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("retired_labels", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("readers_wanted", sa.Integer(), nullable=True))
    with op.batch_alter_table("project_members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adjudicator", sa.Boolean(), nullable=False, server_default=sa.false()))
    for table in ("annotations", "annotation_revisions"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("status", sa.String(length=20), nullable=False, server_default="done")
            )
            batch_op.add_column(sa.Column("comment", sa.Text(), nullable=True))
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.create_index("ix_annotations_project_status", ["project_id", "status"], unique=False)
    op.create_table(
        "adjudications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("saliency_key", sa.String(length=255), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_adjudications_author_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_adjudications_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_adjudications_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjudications")),
        sa.UniqueConstraint("image_id", name=op.f("uq_adjudications_image_id")),
    )
    with op.batch_alter_table("adjudications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adjudications_project_id"), ["project_id"], unique=False)
    op.create_table(
        "adjudication_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adjudication_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("saliency_key", sa.String(length=255), nullable=True),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["adjudication_id"],
            ["adjudications.id"],
            name=op.f("fk_adjudication_revisions_adjudication_id_adjudications"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["author_id"],
            ["users.id"],
            name=op.f("fk_adjudication_revisions_author_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjudication_revisions")),
        sa.UniqueConstraint(
            "adjudication_id", "revision", name=op.f("uq_adjudication_revisions_adjudication_id")
        ),
    )
    with op.batch_alter_table("adjudication_revisions", schema=None) as batch_op:
        batch_op.create_index("ix_adjudication_revisions_saliency_key", ["saliency_key"], unique=False)
    forget_empty_maps(op.get_bind())


def _storage():
    from app.settings import get_settings
    from app.storage import get_storage

    settings = context.config.attributes.get("settings") or get_settings()
    return get_storage(settings)


def forget_empty_maps(conn) -> dict[str, int]:
    """Replace every all-zero stored map by none; recompute the touched images' agreement."""
    from app.imaging import decode_mask
    from app.services.annotations import agreement

    images = sa.table(
        "images",
        sa.column("id"),
        sa.column("width"),
        sa.column("height"),
        sa.column("import_saliency_key"),
        sa.column("agreement_iou"),
        sa.column("agreement_r"),
    )
    annotations = sa.table("annotations", sa.column("id"), sa.column("image_id"), sa.column("saliency_key"))
    revisions = sa.table("annotation_revisions", sa.column("annotation_id"), sa.column("saliency_key"))
    # Every (key, image size) in use: a key is a content hash, so one check per key suffices.
    rows = conn.execute(
        sa.select(revisions.c.saliency_key, images.c.width, images.c.height)
        .select_from(
            revisions.join(annotations, annotations.c.id == revisions.c.annotation_id).join(
                images, images.c.id == annotations.c.image_id
            )
        )
        .where(revisions.c.saliency_key.is_not(None))
        .distinct()
    ).all()
    rows += conn.execute(
        sa.select(images.c.import_saliency_key, images.c.width, images.c.height)
        .where(images.c.import_saliency_key.is_not(None))
        .distinct()
    ).all()
    if not rows:
        return {"maps": 0}
    storage = _storage()
    empty: set[str] = set()
    for key, width, height in {tuple(r) for r in rows}:
        try:
            arr = decode_mask(storage.read_bytes(key), width, height)
        except FileNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - a map that no longer decodes is not ours to judge here
            continue
        if not arr.any():
            empty.add(key)
    if not empty:
        return {"maps": 0}
    touched: set[int] = set()
    for chunk in _chunks(sorted(empty), 500):
        touched |= set(
            conn.scalars(sa.select(annotations.c.image_id).where(annotations.c.saliency_key.in_(chunk)))
        )
        touched |= set(conn.scalars(sa.select(images.c.id).where(images.c.import_saliency_key.in_(chunk))))
        conn.execute(
            sa.update(annotations).where(annotations.c.saliency_key.in_(chunk)).values(saliency_key=None)
        )
        conn.execute(
            sa.update(revisions).where(revisions.c.saliency_key.in_(chunk)).values(saliency_key=None)
        )
        conn.execute(
            sa.update(images).where(images.c.import_saliency_key.in_(chunk)).values(import_saliency_key=None)
        )
    for image_id in sorted(touched):
        width, height = conn.execute(
            sa.select(images.c.width, images.c.height).where(images.c.id == image_id)
        ).one()
        keys = conn.scalars(
            sa.select(annotations.c.saliency_key)
            .where(annotations.c.image_id == image_id, annotations.c.saliency_key.is_not(None))
            .order_by(annotations.c.id)
        ).all()
        maps: list[np.ndarray] = [decode_mask(storage.read_bytes(k), width, height) for k in keys]
        scores = agreement(maps)
        conn.execute(
            sa.update(images)
            .where(images.c.id == image_id)
            .values(agreement_iou=scores.iou, agreement_r=scores.pearson)
        )
    return {"maps": len(empty), "images": len(touched)}


def _chunks(items, size):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def downgrade() -> None:
    with op.batch_alter_table("adjudication_revisions", schema=None) as batch_op:
        batch_op.drop_index("ix_adjudication_revisions_saliency_key")
    op.drop_table("adjudication_revisions")
    with op.batch_alter_table("adjudications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adjudications_project_id"))
    op.drop_table("adjudications")
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_index("ix_annotations_project_status")
    for table in ("annotation_revisions", "annotations"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("comment")
            batch_op.drop_column("status")
    with op.batch_alter_table("project_members", schema=None) as batch_op:
        batch_op.drop_column("adjudicator")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("readers_wanted")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("retired_labels")
        batch_op.drop_column("blind_mode")
        batch_op.drop_column("readers_per_image")
