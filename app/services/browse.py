"""Bulk actions of the image browser (issue 12): set split, set label, delete, re-queue for reading."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.services.errors import Invalid
from app.services.images import (
    check_label,
    check_split,
    delete_unreferenced,
    object_keys_of_images,
    set_image_fields,
)
from app.storage import Storage
from app.tables import Image, Project

ACTIONS = ("set_split", "set_label", "delete", "requeue")
MAX_BULK = 1000


def bulk_action(
    session: Session,
    storage: Storage,
    project: Project,
    image_ids: list[int],
    action: str,
    *,
    split: str | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Apply one action to the project's images among `image_ids` (commits); ids of other
    projects are ignored and counted as `missing`.

    set_split: move to train/val/test. set_label: set the import label (the readers' majority and
    an adjudication still win; an empty label clears it). delete: images with their readings and
    files. requeue: the image wants one reader more than it has, so `next` offers it again to
    readers who have not read it."""
    if action not in ACTIONS:
        raise Invalid(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    ids = sorted(set(image_ids))
    if not ids:
        raise Invalid("no images: send their ids in image_ids")
    if len(ids) > MAX_BULK:
        raise Invalid(f"at most {MAX_BULK} images per request; send the rest in another")
    images = list(session.scalars(select(Image).where(Image.project_id == project.id, Image.id.in_(ids))))
    found = [img.id for img in images]
    result = {"action": action, "changed": len(found), "missing": len(ids) - len(found), "image_ids": found}
    if action == "set_split":
        split = check_split(split or None) if split else None
        if split is None:
            raise Invalid("set_split needs a split: train, val or test")
        session.execute(update(Image).where(Image.id.in_(found)).values(split=split))
        session.commit()
    elif action == "set_label":
        label = check_label(project, label)
        for img in images:
            set_image_fields(session, img, import_label=label, clear_import_label=label is None)
    elif action == "delete":
        keys = object_keys_of_images(session, found)
        for img in images:
            session.delete(img)
        session.commit()
        delete_unreferenced(session, storage, keys)
    else:
        k = max(1, project.readers_per_image or 1)
        for img in images:
            img.readers_wanted = max(img.annotation_count + 1, k)
        session.commit()
    return result
