"""The reading-study part of a dataset folder: every reader's reading and the adjudications.

Folders and files added to DESIGN.md section 3's layout (`saliency/<stem>.png` stays the map
training uses: the adjudicated map where one was saved, else the readers' mean):

```
readings.csv                 image,reader,label,status,comment    every reader's current reading
readers/<reader>/<stem>.png  a reader's map (absent: label only, no map)
adjudications.csv            image,label,adjudicator              every adjudication
adjudicated/<stem>.png       the adjudicated map (absent: the label only was adjudicated)
consensus/<stem>.png         the readers' mean, where an adjudicated map replaced it in saliency/
```

`<reader>` is the username (made safe for a path). Import reads them back: readings of readers
with an account on this server become their annotations, those of unknown readers are counted
and left out; adjudications become the image's adjudication (by the named adjudicator when
they have an account). A bad row (unknown image, label or status, a map of the wrong size) rejects
the whole import like any other problem.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.imaging import ImageError, decode_mask, encode_mask
from app.services.annotations import consensus_of, refresh_image
from app.services.errors import Invalid, TooLarge
from app.services.images import safe_name
from app.storage import Storage
from app.tables import (
    Adjudication,
    AdjudicationRevision,
    Annotation,
    AnnotationRevision,
    Image,
    Project,
    ReadingStatus,
    User,
)

READINGS_CSV = "readings.csv"
ADJUDICATIONS_CSV = "adjudications.csv"


@dataclass
class Reading:
    reader: str
    label: str | None
    status: str
    comment: str | None
    saliency_key: str | None


@dataclass
class AdjudicatedEntry:
    label: str | None
    adjudicator: str | None
    saliency_key: str | None


def reader_folder(username: str) -> str:
    name = safe_name(username)
    return name if name == username and not name.startswith(".") else f"reader-{abs(hash(username)) % 10**8}"


def study_facts(
    session: Session, image_ids: list[int]
) -> tuple[dict[int, list[Reading]], dict[int, AdjudicatedEntry]]:
    """Per image id: the readers' current readings (annotation order) and the adjudication."""
    readings: dict[int, list[Reading]] = {}
    adjudications: dict[int, AdjudicatedEntry] = {}
    for i in range(0, len(image_ids), 500):
        chunk = image_ids[i : i + 500]
        for image_id, reader, label, status, comment, key in session.execute(
            select(
                Annotation.image_id,
                User.username,
                Annotation.label,
                Annotation.status,
                Annotation.comment,
                Annotation.saliency_key,
            )
            .join(User, User.id == Annotation.author_id)
            .where(Annotation.image_id.in_(chunk))
            .order_by(Annotation.id)
        ):
            readings.setdefault(image_id, []).append(Reading(reader, label, status, comment, key))
        for image_id, label, author, key in session.execute(
            select(Adjudication.image_id, Adjudication.label, User.username, Adjudication.saliency_key)
            .outerjoin(User, User.id == Adjudication.author_id)
            .where(Adjudication.image_id.in_(chunk))
        ):
            adjudications[image_id] = AdjudicatedEntry(label, author, key)
    return readings, adjudications


def study_files(storage: Storage, entries: list[Any]) -> Iterator[tuple[str, bytes]]:
    """(path inside the dataset folder, bytes) of the reading-study files, one map at a time."""
    readings_rows: list[list[str]] = []
    adjudication_rows: list[list[str]] = []
    for e in entries:
        maps = []
        for r in e.readings:
            readings_rows.append([e.name, r.reader, r.label or "", r.status, r.comment or ""])
            if r.saliency_key:
                maps.append(r.saliency_key)
                yield f"readers/{reader_folder(r.reader)}/{e.stem}.png", storage.read_bytes(r.saliency_key)
        adj = e.adjudication
        if adj is not None:
            adjudication_rows.append([e.name, adj.label or "", adj.adjudicator or ""])
            if adj.saliency_key:
                yield f"adjudicated/{e.stem}.png", storage.read_bytes(adj.saliency_key)
                if maps:
                    arrays = [decode_mask(storage.read_bytes(k), e.width, e.height) for k in maps]
                    yield f"consensus/{e.stem}.png", encode_mask(consensus_of(arrays))
    if readings_rows:
        yield READINGS_CSV, _csv(["image", "reader", "label", "status", "comment"], readings_rows)
    if adjudication_rows:
        yield ADJUDICATIONS_CSV, _csv(["image", "label", "adjudicator"], adjudication_rows)


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


# --- import -----------------------------------------------------------------------------------------


def _read_csv(source, path: str, problems, columns: list[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        text = source.read(path, 64 * 1024 * 1024).decode("utf-8-sig")
    except (TooLarge, Invalid, UnicodeDecodeError) as exc:
        problems.add(posixpath.basename(path), f"cannot read: {exc}")
        return []
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        problems.add(posixpath.basename(path), f"the header needs the columns {','.join(columns)}", 1)
        return []
    return [(reader.line_num, row) for row in reader]


def import_study(
    session: Session,
    storage: Storage,
    staging,
    source,
    root: str,
    name_set: set[str],
    project: Project,
    images_by_name: dict[str, Image],
    problems,
    max_bytes: int,
) -> dict[str, int]:
    """Read readings.csv, readers/, adjudications.csv and adjudicated/ into annotations and
    adjudications of the newly imported images (flushes; the caller commits). Problems go to
    `problems`; the caller rejects the import when there are any."""
    report = {"readings": 0, "readings_of_unknown_readers": 0, "adjudications": 0}
    if root + READINGS_CSV not in name_set and root + ADJUDICATIONS_CSV not in name_set:
        return report
    users = {u.username: u for u in session.scalars(select(User).where(User.is_active.is_(True)))}
    now = datetime.now(UTC)
    pending: dict[int, dict[str, Any]] = {}

    def load_map(path: str, image: Image, line: int, file: str):
        if root + path not in name_set:
            return None
        try:
            arr = decode_mask(source.read(root + path, max_bytes), image.width, image.height)
        except (ImageError, TooLarge, Invalid) as exc:
            problems.add(path, str(exc), line)
            return None
        if not arr.any():
            return None
        key = staging.put_bytes(encode_mask(arr), ".png")
        pending.setdefault(image.id, {})[key] = arr
        return key

    touched: set[int] = set()
    if root + READINGS_CSV in name_set:
        seen: set[tuple[str, str]] = set()
        for line, row in _read_csv(
            source, root + READINGS_CSV, problems, ["image", "reader", "label", "status"]
        ):
            name, reader = row["image"].strip(), row["reader"].strip()
            label = (row.get("label") or "").strip() or None
            status = (row.get("status") or "").strip() or ReadingStatus.DONE
            comment = (row.get("comment") or "").strip() or None
            image = images_by_name.get(name)
            if image is None:
                continue  # an image already in the project (or not listed): its readings stay as they are
            if status not in tuple(ReadingStatus):
                problems.add(
                    READINGS_CSV, f"unknown status {status!r}; use one of {', '.join(ReadingStatus)}", line
                )
                continue
            if label is not None and label not in project.labels:
                problems.add(
                    READINGS_CSV, f"unknown label {label!r}; the project's labels are {project.labels}", line
                )
                continue
            if (name, reader) in seen:
                problems.add(READINGS_CSV, f"reader {reader!r} is listed twice for {name!r}", line)
                continue
            seen.add((name, reader))
            stem = posixpath.splitext(name)[0]
            key = load_map(f"readers/{reader_folder(reader)}/{stem}.png", image, line, READINGS_CSV)
            user = users.get(reader)
            if user is None:
                report["readings_of_unknown_readers"] += 1
                continue
            annotation = Annotation(
                project_id=project.id,
                image_id=image.id,
                author_id=user.id,
                label=label,
                saliency_key=key,
                status=status,
                comment=comment,
                revision=1,
                created_at=now,
                updated_at=now,
            )
            session.add(annotation)
            session.flush()
            session.add(
                AnnotationRevision(
                    annotation_id=annotation.id,
                    revision=1,
                    label=label,
                    saliency_key=key,
                    status=status,
                    comment=comment,
                    author_id=user.id,
                    created_at=now,
                )
            )
            touched.add(image.id)
            report["readings"] += 1
    if root + ADJUDICATIONS_CSV in name_set:
        for line, row in _read_csv(source, root + ADJUDICATIONS_CSV, problems, ["image", "label"]):
            name = row["image"].strip()
            label = (row.get("label") or "").strip() or None
            image = images_by_name.get(name)
            if image is None:
                continue
            if label is None or label not in project.labels:
                problems.add(
                    ADJUDICATIONS_CSV, f"an adjudication needs one of the labels {project.labels}", line
                )
                continue
            key = load_map(f"adjudicated/{posixpath.splitext(name)[0]}.png", image, line, ADJUDICATIONS_CSV)
            author = users.get((row.get("adjudicator") or "").strip())
            adj = Adjudication(
                project_id=project.id,
                image_id=image.id,
                author_id=author.id if author else None,
                label=label,
                saliency_key=key,
                revision=1,
                created_at=now,
                updated_at=now,
            )
            session.add(adj)
            session.flush()
            session.add(
                AdjudicationRevision(
                    adjudication_id=adj.id,
                    revision=1,
                    label=label,
                    saliency_key=key,
                    author_id=adj.author_id,
                    created_at=now,
                )
            )
            touched.add(image.id)
            report["adjudications"] += 1
    if problems.items:
        return report
    session.flush()
    by_id = {img.id: img for img in images_by_name.values()}
    for image_id in sorted(touched):
        refresh_image(session, storage, by_id[image_id], project, pending.get(image_id))
    return report
