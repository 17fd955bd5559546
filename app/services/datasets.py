"""Dataset folders (DESIGN.md section 3): import a zip or folder into a project, export one back.

```
DATASET/labels.csv          image,label[,split][,group][,subtype]  (rules: sage/labels_csv.py)
DATASET/images/<image>
DATASET/saliency/<stem>.png optional 8-bit grayscale map of the image's size
DATASET/pixels/<stem>.npy   optional (training snapshots): the decoded array stored at upload,
DATASET/pixels/<stem>.json    with {"bit_depth", "header_window"}; sage.data reads it instead of
                              decoding images/<image> again
```

Import is all or nothing: every row is checked (file present and a real image, label known,
split known, map of the right size and type) while files are staged; any problem rejects the whole
import with each problem's file and line, and nothing is written. Otherwise the rows are committed
and then the files moved into place. Zips are opened defensively: entries that would escape the
folder (zip slip), symlinks, too many entries, too many uncompressed bytes or a suspicious
compression ratio (zip bombs) are refused before anything is extracted.

Export writes the same layout, the label of each image (majority of its annotators, else its
import label) and its consensus saliency map; `write_dataset_folder` is what a training run
snapshots, `export_zip_stream` streams it as a zip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.imaging import ImageError, decode_image, decode_mask, encode_mask, suffix_for
from app.services.annotations import consensus_of
from app.services.errors import Invalid, TooLarge, Unsupported
from app.services.images import pixel_array, pixel_fields, safe_name
from app.services.study_io import import_study, study_facts, study_files
from app.settings import Settings
from app.storage import CHUNK, Storage
from app.tables import Adjudication, Annotation, Image, Project, User
from sage.labels_csv import LABELS_CSV, LabelRow, format_labels_csv, parse_labels_csv

MAX_ERRORS = 100
SNAPSHOT_THREADS = 8  # concurrent object reads of a dataset snapshot
MAX_LABELS_CSV_BYTES = 64 * 1024 * 1024
RATIO_MIN_BYTES = 1024 * 1024  # small members may compress well (a flat mask); don't judge those


class ImportRejected(Invalid):
    """The import had problems; `errors` lists each with its file and line. Nothing was imported."""

    def __init__(self, errors: list[dict[str, Any]], truncated: bool = False) -> None:
        shown = "; ".join(_format_error(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(
            f"import rejected, nothing was imported: {len(errors)}{'+' if truncated else ''} problem(s): {shown}{more}"
        )
        self.errors = errors


def _format_error(e: dict[str, Any]) -> str:
    where = e["file"] + (f" line {e['line']}" if e.get("line") else "")
    return f"{where}: {e['error']}"


# --- sources -------------------------------------------------------------------------------------


class DatasetSource:
    """Files of a dataset: relative POSIX names -> bytes, each read with a size limit."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str, limit: int) -> bytes:
        raise NotImplementedError


def _clean_member_name(raw: str) -> str:
    """A zip member name as a relative POSIX path, or Invalid when it could escape the folder."""
    name = raw.replace("\\", "/")
    parts = name.split("/")
    if name.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts or "\x00" in name:
        raise Invalid(
            f"zip entry {raw[:200]!r} points outside the dataset folder (zip slip); remove it and re-zip"
        )
    return posixpath.normpath(name) if name else name


class ZipSource(DatasetSource):
    """A zip archive, checked for zip slip and zip bombs before anything is read."""

    def __init__(self, fileobj: BinaryIO, settings: Settings) -> None:
        head = fileobj.read(4)
        fileobj.seek(0)
        if head[:2] != b"PK":
            raise Unsupported(
                "the upload is not a zip archive; zip the dataset folder (labels.csv, images/, saliency/)"
            )
        try:
            self.zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise Invalid(f"the zip archive is corrupt: {exc}") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        infos = self.zip.infolist()
        if len(infos) > settings.max_import_files:
            raise TooLarge(
                f"the zip has {len(infos):,} entries, over the limit of {settings.max_import_files:,}"
            )
        total = 0
        for info in infos:
            name = _clean_member_name(info.filename)
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise Invalid(f"zip entry {info.filename!r} is a symbolic link; store the file itself")
            total += info.file_size
            if total > settings.max_import_uncompressed_bytes:
                raise TooLarge(
                    f"the zip expands to more than {settings.max_import_uncompressed_bytes:,} bytes; split the import"
                )
            if info.file_size > RATIO_MIN_BYTES and info.file_size > settings.max_zip_ratio * max(
                info.compress_size, 1
            ):
                raise TooLarge(
                    f"zip entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f}-fold "
                    f"(limit {settings.max_zip_ratio:,.0f}); this looks like a zip bomb"
                )
            if name in self.members:
                raise Invalid(f"zip entry {info.filename!r} appears twice")
            self.members[name] = info

    def names(self) -> list[str]:
        return list(self.members)

    def read(self, name: str, limit: int) -> bytes:
        info = self.members[name]
        if info.file_size > limit:
            raise TooLarge(f"{info.file_size:,} bytes, over the per-file limit of {limit:,}")
        try:
            with self.zip.open(info) as f:
                # ZipExtFile stops at the declared size and checks the CRC: a lying header fails here.
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise Invalid(f"cannot be extracted: {exc}") from None
        if len(data) > limit:
            raise TooLarge(f"over the per-file limit of {limit:,} bytes")
        return data


class FolderSource(DatasetSource):
    """A dataset folder on disk (CLI import). Symbolic links are not followed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise Invalid(f"{root} is not a folder")
        self._names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
            for fn in filenames:
                p = Path(dirpath) / fn
                if p.is_symlink() or not p.is_file():
                    continue
                self._names.append(p.relative_to(self.root).as_posix())

    def names(self) -> list[str]:
        return list(self._names)

    def read(self, name: str, limit: int) -> bytes:
        path = self.root / name
        size = path.stat().st_size
        if size > limit:
            raise TooLarge(f"{size:,} bytes, over the per-file limit of {limit:,}")
        return path.read_bytes()


def open_source(path: Path, settings: Settings) -> DatasetSource:
    if path.is_dir():
        return FolderSource(path)
    return ZipSource(open(path, "rb"), settings)  # the source owns the file


# --- import --------------------------------------------------------------------------------------


@dataclass
class _Problems:
    items: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    def add(self, file: str, error: str, line: int | None = None) -> None:
        if len(self.items) >= MAX_ERRORS:
            self.truncated = True
            return
        entry: dict[str, Any] = {"file": file, "error": error}
        if line is not None:
            entry["line"] = line
        self.items.append(entry)

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_ERRORS


def dataset_root(names: list[str]) -> str:
    candidates = [n for n in names if posixpath.basename(n) == LABELS_CSV and n.count("/") <= 1]
    candidates = [c for c in candidates if not c.startswith("__MACOSX/")]
    if not candidates:
        raise Invalid(
            "no labels.csv at the top of the zip (or in its single top folder); see the dataset format"
        )
    if len(candidates) > 1:
        raise Invalid(f"several labels.csv files: {sorted(candidates)}; import one dataset at a time")
    root = posixpath.dirname(candidates[0])
    return f"{root}/" if root else ""


def _parse_labels(data: bytes, project: Project, problems: _Problems) -> list[LabelRow]:
    """The good rows of labels.csv (sage.labels_csv rules; unlabelled rows allowed), each problem
    added to `problems`."""
    parsed = parse_labels_csv(data, labels=project.labels, allow_unlabelled=True)
    for p in parsed.problems:
        problems.add(LABELS_CSV, p.message, p.line)
    if "split" not in parsed.columns:  # no split given: the project draws one at training (`draw_splits`)
        return [dataclasses.replace(r, split=None) for r in parsed.rows]
    return parsed.rows


def _group_splits(session: Session, project: Project, groups: set[str]) -> dict[str, str]:
    """The split each of `groups` already has among the project's images (groups without one left out)."""
    found: dict[str, str] = {}
    names = sorted(groups)
    for i in range(0, len(names), 500):
        for group, split in session.execute(
            select(Image.group, Image.split).where(
                Image.project_id == project.id, Image.group.in_(names[i : i + 500]), Image.split.is_not(None)
            )
        ):
            if group is not None and split is not None:
                found.setdefault(group, split)
    return found


def read_labels(source: DatasetSource) -> bytes:
    """The bytes of the source's labels.csv (Invalid when there is none or several)."""
    return source.read(dataset_root(source.names()) + LABELS_CSV, MAX_LABELS_CSV_BYTES)


def import_dataset(
    session: Session,
    storage: Storage,
    settings: Settings,
    project: Project,
    user: User | None,
    source: DatasetSource,
) -> dict[str, Any]:
    """Import a dataset folder into a project, all or nothing (commits). Returns the report.

    Raises ImportRejected (422, with `errors`: file, line, error), or Invalid/TooLarge/Unsupported
    for an archive that cannot be opened safely. Images whose bytes are already in the project are
    left as they are and counted as `existing`.
    """
    names = source.names()
    root = dataset_root(names)
    name_set = set(names)
    problems = _Problems()
    try:
        labels_data = source.read(root + LABELS_CSV, MAX_LABELS_CSV_BYTES)
    except (TooLarge, Invalid) as exc:
        raise ImportRejected([{"file": LABELS_CSV, "error": str(exc)}]) from None
    rows = _parse_labels(labels_data, project, problems)

    stems = Counter(posixpath.splitext(r.image)[0] for r in rows)
    existing = set(session.scalars(select(Image.sha256).where(Image.project_id == project.id)))
    group_splits = _group_splits(session, project, {r.group for r in rows if r.group})
    seen_sha: set[str] = set()
    new_rows: list[Image] = []
    listed = {root + "images/" + r.image for r in rows}
    n_existing = 0

    with storage.staging() as staging:
        for row in rows:
            if problems.full:
                break
            held = group_splits.get(row.group) if row.group else None
            if held is not None and row.split is not None and held != row.split:
                problems.add(
                    LABELS_CSV,
                    f"group {row.group!r} of {row.image} is in split {held} in the project, not {row.split}; "
                    "splits never cut a group",
                    row.line,
                )
                continue
            member = root + "images/" + row.image
            if member not in name_set:
                problems.add(LABELS_CSV, f"images/{row.image} is not in the dataset", row.line)
                continue
            try:
                data = source.read(member, settings.max_upload_bytes)
                decoded = decode_image(data, max_pixels=settings.max_image_pixels, what="the image")
            except (ImageError, TooLarge, Invalid) as exc:
                problems.add(f"images/{row.image}", str(exc), row.line)
                continue
            width, height, fmt = decoded.width, decoded.height, decoded.format
            sha = hashlib.sha256(data).hexdigest()
            if sha in existing or sha in seen_sha:
                n_existing += 1
                continue
            seen_sha.add(sha)
            stem = posixpath.splitext(row.image)[0]
            mask_member = root + "saliency/" + stem + ".png"
            mask_key = None
            if mask_member in name_set:
                if stems[stem] > 1:
                    problems.add(
                        f"saliency/{stem}.png",
                        f"belongs to several images named {stem}.*; rename them",
                        row.line,
                    )
                    continue
                try:
                    mask = decode_mask(source.read(mask_member, settings.max_upload_bytes), width, height)
                except (ImageError, TooLarge, Invalid) as exc:
                    problems.add(f"saliency/{stem}.png", str(exc), row.line)
                    continue
                if mask.any():  # a map that is zero everywhere is no map (label only)
                    mask_key = staging.put_bytes(encode_mask(mask), ".png")
            key = staging.put_bytes(data, suffix_for(fmt))
            new_rows.append(
                Image(
                    **pixel_fields(decoded, staging),
                    project_id=project.id,
                    sha256=sha,
                    storage_key=key,
                    original_name=row.image,
                    format=fmt,
                    width=width,
                    height=height,
                    size_bytes=len(data),
                    split=row.split,
                    group=row.group,
                    import_label=row.label,
                    label=row.label,
                    subtype=row.subtype,
                    import_saliency_key=mask_key,
                    uploaded_by_id=user.id if user else None,
                )
            )
        if problems.items:
            raise ImportRejected(problems.items, problems.truncated)
        session.add_all(new_rows)
        session.flush()
        study = import_study(
            session,
            storage,
            staging,
            source,
            root,
            name_set,
            project,
            {r.original_name: r for r in new_rows},
            problems,
            settings.max_upload_bytes,
        )
        if problems.items:
            session.rollback()
            raise ImportRejected(problems.items, problems.truncated)
        report = {
            "imported": len(new_rows),
            "existing": n_existing,
            "with_saliency": sum(1 for r in new_rows if r.import_saliency_key),
            "labels": dict(Counter(r.label for r in new_rows if r.label)),
            "splits": dict(Counter(r.split or "unassigned" for r in new_rows)),
            "ignored_files": sorted(
                n[len(root) :] for n in names if n.startswith(root + "images/") and n not in listed
            )[:1000],
            "image_ids": [r.id for r in new_rows],
            **study,
        }
        session.commit()
    return report


# --- export ----------------------------------------------------------------------------------------


@dataclass
class DatasetEntry:
    """One image of an export: where its bytes are, its file name in the dataset, label and maps."""

    image_id: int
    name: str
    storage_key: str
    label: str | None
    split: str
    width: int
    height: int
    saliency_keys: list[str]  # the annotators' current maps; else the imported map, if any
    group: str | None = None  # patient, subject or device (`Image.group`), written to labels.csv when set
    subtype: str | None = None  # Image.subtype (from an imported labels.csv)
    readings: list[Any] = field(default_factory=list)  # app.services.study_io.Reading, per reader
    adjudication: Any = None  # app.services.study_io.AdjudicatedEntry, when adjudicated
    array_key: str | None = None  # the decoded pixels stored at upload (.npy), if any
    bit_depth: int | None = None
    header_window: list[float] | None = None  # (center, width) from the file's header, if any

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]


def dataset_entries(
    session: Session, project: Project, *, only_labelled: bool = True
) -> tuple[list[DatasetEntry], dict[str, Any]]:
    """The images of a dataset export, in id order, and their lineage
    {"annotations": {"<annotation id>": revision}, "images", "with_saliency", "labels": {label: n}}."""
    q = select(Image).where(Image.project_id == project.id)
    if only_labelled:
        q = q.where(Image.label.is_not(None))
    images = list(session.scalars(q.order_by(Image.id)))
    maps: dict[int, list[str]] = {}
    revisions: dict[str, int] = {}
    adjudications: dict[str, int] = {}
    adjudicated: dict[int, str] = {}
    ids = [img.id for img in images]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for aid, image_id, rev, key in session.execute(
            select(Annotation.id, Annotation.image_id, Annotation.revision, Annotation.saliency_key)
            .where(Annotation.image_id.in_(chunk))
            .order_by(Annotation.id)
        ):
            revisions[str(aid)] = rev
            if key:
                maps.setdefault(image_id, []).append(key)
        # An adjudicated map replaces the readers' mean (issue 12); a label-only adjudication does not.
        for adj_id, image_id, rev, key in session.execute(
            select(
                Adjudication.id, Adjudication.image_id, Adjudication.revision, Adjudication.saliency_key
            ).where(Adjudication.image_id.in_(chunk))
        ):
            adjudications[str(adj_id)] = rev
            if key:
                adjudicated[image_id] = key
    used_names: set[str] = set()
    used_stems: set[str] = set()
    entries = []
    for img in images:
        name = _export_name(img, used_names, used_stems)
        keys = (
            [adjudicated[img.id]]
            if img.id in adjudicated
            else maps.get(img.id) or ([img.import_saliency_key] if img.import_saliency_key else [])
        )
        entries.append(
            DatasetEntry(
                img.id,
                name,
                img.storage_key,
                img.label,
                img.split or "train",
                img.width,
                img.height,
                keys,
                group=img.group,
                subtype=img.subtype,
                array_key=img.array_key,
                bit_depth=img.bit_depth,
                header_window=(img.pixel_info or {}).get("header_window"),
            )
        )
    readings, adjudicated_entries = study_facts(session, ids)
    for e in entries:
        e.readings = readings.get(e.image_id, [])
        e.adjudication = adjudicated_entries.get(e.image_id)
    lineage = {
        "annotations": revisions,
        "adjudications": adjudications,
        "images": len(entries),
        "with_saliency": sum(1 for e in entries if e.saliency_keys),
        "labels": dict(Counter(e.label for e in entries if e.label)),
    }
    return entries, lineage


def _export_name(img: Image, used_names: set[str], used_stems: set[str]) -> str:
    """The image's original name when usable and unique (names and stems, ignoring case), else id-prefixed."""
    suffix = suffix_for(img.format)
    name = safe_name(img.original_name)
    if not name:
        name = f"{img.id}{suffix}"
    elif not posixpath.splitext(name)[1]:
        name += suffix
    stem = posixpath.splitext(name)[0]
    if name.lower() in used_names or stem.lower() in used_stems:
        name = f"{img.id}_{name}"
        stem = posixpath.splitext(name)[0]
    used_names.add(name.lower())
    used_stems.add(stem.lower())
    return name


def labels_csv(entries: list[DatasetEntry]) -> bytes:
    """labels.csv of an export: image,label,split (plus group and subtype when an entry has one)."""
    rows = (LabelRow(0, e.name, e.label, e.split, e.group, e.subtype) for e in entries)
    return format_labels_csv(rows).encode()


def entry_saliency_png(storage: Storage, entry: DatasetEntry) -> bytes | None:
    """The consensus map of an entry as PNG bytes (the stored file itself when there is one map)."""
    if not entry.saliency_keys:
        return None
    if len(entry.saliency_keys) == 1:
        return storage.read_bytes(entry.saliency_keys[0])  # stored canonical: encode_mask of the map
    arrays = [decode_mask(storage.read_bytes(k), entry.width, entry.height) for k in entry.saliency_keys]
    return encode_mask(consensus_of(arrays))


# Shares of a project's labelled images `draw_splits` puts in each split (images without a split).
SPLIT_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}


def draw_splits(session: Session, project: Project, shares: dict[str, float] | None = None) -> dict[str, int]:
    """Give every labelled image of `project` that has no split one, once (flushes; the caller
    commits). Returns how many images each split received.

    Splits are fixed once drawn: an image that has a split keeps it, so a project's test and
    validation images stay the same from run to run and models are compared on the same images.
    A group (patient, subject, device) never spans splits: an image whose group already has a
    split joins it; a new group (or an ungrouped image) is one unit, assigned in a deterministic
    order (a hash of the project and the unit) to the split furthest below its share among the
    images of the unit's majority label, which keeps the splits stratified as the project grows.
    """
    shares = shares or SPLIT_SHARES
    images = list(
        session.scalars(
            select(Image).where(Image.project_id == project.id, Image.label.is_not(None)).order_by(Image.id)
        )
    )
    units: dict[str, list[Image]] = {}
    for img in images:
        units.setdefault(f"g:{img.group}" if img.group else f"i:{img.id}", []).append(img)
    counts: dict[str | None, Counter] = {}
    for img in images:
        if img.split:
            counts.setdefault(img.label, Counter())[img.split] += 1
    drawn: Counter = Counter()

    def assign(members: list[Image], split: str) -> None:
        for img in members:
            if not img.split:
                img.split = split
                counts.setdefault(img.label, Counter())[split] += 1
                drawn[split] += 1

    fresh = []
    for key, members in units.items():
        if all(img.split for img in members):
            continue
        given = Counter(img.split for img in members if img.split)
        if given:  # the group already has a split: the rest of it joins that split
            assign(members, given.most_common(1)[0][0])
        else:
            fresh.append(key)
    fresh.sort(key=lambda key: hashlib.sha256(f"{project.id}:{key}".encode()).hexdigest())
    for key in fresh:
        members = units[key]
        label = Counter(img.label for img in members).most_common(1)[0][0]
        have = counts.get(label, Counter())
        total = sum(have.values()) + len(members)
        split = max(shares, key=lambda s: (shares[s] * total - have[s], -list(shares).index(s)))
        assign(members, split)
    session.flush()
    return dict(drawn)


def write_dataset_folder(
    session: Session,
    storage: Storage,
    project: Project,
    out_dir: Path,
    *,
    only_labelled: bool = True,
    study: bool = False,
    arrays: bool = False,
) -> dict[str, Any]:
    """Write the project's dataset folder (labels.csv, images/, saliency/<stem>.png: the adjudicated
    map, else the readers' mean) to `out_dir` (created; must be empty) and return the lineage
    {"annotations": {"<annotation id>": revision, ...}, "adjudications": {...}, "images": n,
    "with_saliency": m, "labels": {label: count}}. Image labels: the adjudicated label, else the
    majority of the readers' current labels, else the import label. Used by the worker to snapshot
    a training run's data; `study=True` (exports) adds the readers' readings and adjudications.
    `arrays=True` (training snapshots) adds pixels/<stem>.npy, the array decoded once at upload,
    and pixels/<stem>.json ({"bit_depth", "header_window"}), so training never decodes the
    originals again. Rows from before migration 0004 (no stored array) are decoded here once and
    their array stored (the backfill of `app.services.images.pixel_array`, committed); one that
    cannot be decoded gets no array, and the loader reports it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise Invalid(f"{out_dir} is not empty")
    entries, lineage = dataset_entries(session, project, only_labelled=only_labelled)
    (out_dir / "images").mkdir()
    (out_dir / "saliency").mkdir()
    if arrays:
        (out_dir / "pixels").mkdir()
        for e in entries:
            if not e.array_key:
                _backfill_array(session, storage, e)

    def write_entry(e: DatasetEntry) -> None:
        with storage.open(e.storage_key) as src, open(out_dir / "images" / e.name, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        if arrays and e.array_key:
            write_pixels(storage, e, out_dir / "pixels")
        png = entry_saliency_png(storage, e)
        if png is not None:
            (out_dir / "saliency" / f"{e.stem}.png").write_bytes(png)

    # Several reads in flight: object storage answers each request in milliseconds, not microseconds.
    with ThreadPoolExecutor(max_workers=SNAPSHOT_THREADS) as pool:
        for _ in pool.map(write_entry, entries):
            pass
    # The reading-study files (app.services.study_io) for an export; a training snapshot needs
    # only saliency/, which already holds the adjudicated map where there is one.
    for path, data in study_files(storage, entries) if study else ():
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / path).write_bytes(data)
    (out_dir / LABELS_CSV).write_bytes(labels_csv(entries))
    return lineage


def _backfill_array(session: Session, storage: Storage, e: DatasetEntry) -> None:
    """Decode and store the array of a row from before migration 0004 (once; committed)."""
    image = session.get_one(Image, e.image_id)
    try:
        pixel_array(session, storage, image)
    except (ImageError, FileNotFoundError):
        session.rollback()
        return
    e.array_key, e.bit_depth = image.array_key, image.bit_depth
    e.header_window = (image.pixel_info or {}).get("header_window")


def write_pixels(storage: Storage, e: DatasetEntry, folder: Path) -> bool:
    """Copy the entry's stored array to folder/<stem>.npy with its folder/<stem>.json
    ({"bit_depth", "header_window"}); False (nothing written) when the array object is missing."""
    npy = folder / f"{e.stem}.npy"
    if e.array_key is None:
        return False
    try:
        with storage.open(e.array_key) as src, open(npy, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except FileNotFoundError:
        npy.unlink(missing_ok=True)
        return False
    meta = {"bit_depth": e.bit_depth, "header_window": e.header_window}
    (folder / f"{e.stem}.json").write_text(json.dumps(meta))
    return True


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream collecting what zipfile writes, drained between files."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.chunks.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))  # fixed time: equal data, equal bytes
    info.external_attr = 0o644 << 16
    return info


def export_zip_stream(
    storage: Storage, entries: list[DatasetEntry], folder: str = "dataset"
) -> Iterator[bytes]:
    """Stream a zip of the dataset folder, file by file (memory: one image at a time).

    Works from `dataset_entries` output and storage alone, so no database session is held while
    the client downloads."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        zf.writestr(_zip_info(f"{folder}/{LABELS_CSV}"), labels_csv(entries), zipfile.ZIP_DEFLATED)
        yield sink.drain()
        for e in entries:
            info = _zip_info(f"{folder}/images/{e.name}")
            info.compress_type = zipfile.ZIP_STORED
            with storage.open(e.storage_key) as src, zf.open(info, "w") as dst:
                while chunk := src.read(CHUNK):  # streamed: one chunk in memory, not the file
                    dst.write(chunk)
                    yield sink.drain()
            png = entry_saliency_png(storage, e)
            if png is not None:
                zf.writestr(_zip_info(f"{folder}/saliency/{e.stem}.png"), png, zipfile.ZIP_STORED)
            yield sink.drain()
        for path, data in study_files(storage, entries):
            method = zipfile.ZIP_DEFLATED if path.endswith(".csv") else zipfile.ZIP_STORED
            zf.writestr(_zip_info(f"{folder}/{path}"), data, method)
            yield sink.drain()
    yield sink.drain()
