"""Pretrained weights for a fleet: `sage-studio weights add` stores the file in the object storage
(content-addressed, `<sha256>.pth`) and records it in the `weights_files` table, so a train worker
on another machine, whose `SAGE_WEIGHTS_DIR` is its own scratch folder, fetches a registered file
when it is missing there (`ensure_local`), verified by its SHA-256 and the torchvision hash prefix
in its name. Torch-free; `sage.weights` keeps the folder logic and imports nothing from app.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.storage import Storage
from app.tables import WeightsFile
from sage.weights import (
    HASHED_NAME,
    WeightsEntry,
    WeightsError,
    register_custom,
    resolve,
    sha256_of,
    verify_file,
)


def publish(session: Session, storage: Storage, entry: WeightsEntry, folder: Path) -> WeightsFile:
    """Store the registered file `folder/entry.file` in `storage` (streamed) and record it under
    `entry.name` (replacing an earlier file of that name); commits."""
    path = folder / entry.file
    digest = sha256_of(path)
    with open(path, "rb") as src:
        key = storage.put_file(src, ".pth")
    row = session.get(WeightsFile, entry.name) or WeightsFile(name=entry.name)
    row.backbone, row.file, row.source, row.sha256, row.storage_key = (
        entry.backbone, entry.file, entry.source, digest, key,
    )  # fmt: skip
    session.add(row)
    session.commit()
    return row


def registered(session: Session) -> list[WeightsFile]:
    return list(session.scalars(select(WeightsFile).order_by(WeightsFile.name)))


def check_registered(session: Session, name: str, backbone: str) -> bool:
    """Whether `name` is registered in storage for `backbone`; raises WeightsError for another
    backbone."""
    row = session.get(WeightsFile, name)
    if row is None:
        return False
    if row.backbone != backbone:
        raise WeightsError(f"weights {name!r} are for backbone {row.backbone!r}, not {backbone!r}")
    return True


def ensure_local(session: Session, storage: Storage, name: str, folder: Path) -> Path | None:
    """The local file of registered weights `name` in `folder`, fetched from `storage` first when
    it is missing there (written under a temporary name, checked against the recorded SHA-256 and
    the hash prefix of its torchvision-style name, then renamed; custom weights are also entered in
    the folder's registry.json). None when `name` is not registered in storage."""
    row = session.get(WeightsFile, name)
    if row is None:
        return None
    match = HASHED_NAME.match(row.file)
    if match is None or "/" in row.file:
        raise WeightsError(f"registered weights {name!r} have an invalid file name {row.file!r}")
    target = folder / row.file
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{row.file}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        try:
            with storage.open(row.storage_key) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            actual = digest.hexdigest()
            if actual != row.sha256 or not actual.startswith(match["hash"]):
                raise WeightsError(
                    f"weights {name!r} fetched from storage do not match: SHA-256 {actual[:12]}..., recorded "
                    f"{row.sha256[:12]}... (name says {match['hash']}); register the file again"
                )
            os.replace(tmp, target)
        except FileNotFoundError as exc:
            raise WeightsError(
                f"weights {name!r} are registered but their object {row.storage_key} is missing from storage; "
                "register the file again with `sage-studio weights add`"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
    if row.source == "custom":
        try:
            resolve(name, row.backbone, folder)
        except WeightsError:  # not yet in this folder's registry.json
            register_custom(folder, name, row.backbone, row.file, row.sha256)
    verify_file(target)
    return target
