"""The orphan sweep: stored objects that no row uses and that nobody wrote for a grace period.

Orphans come from a process that died between writing a file and committing its row (files go
into place before the commit), from synchronous predict uploads (kept for the worker, used by no
row) and from removals that were skipped because a writer touched the file at that moment. Beat
runs the sweep every `SAGE_ORPHAN_SWEEP_INTERVAL_S`; `sage-studio sweep --dry-run` lists without
removing. A file is "used" when any `*_key` column of any table holds its key, so tables added
later are covered without registering them here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import String, select
from sqlalchemy.orm import Session

from app.storage import Storage
from app.tables import Base, ModelVersion

REPORT_FILE = "orphan-sweep.json"
CHUNK = 500


@dataclass
class SweepReport:
    scanned: int = 0
    orphans: int = 0  # unused and older than the grace period
    removed: int = 0
    kept: int = 0  # orphans a writer touched, or a row took, while they were being removed
    temp_removed: int = 0  # temporary files of writes that died mid-way (older than the grace period)
    dry_run: bool = False
    finished_at: float = 0.0


def key_columns():
    """Every column that may hold a storage key: String columns whose name ends with `_key`."""
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if column.name.endswith("_key") and isinstance(column.type, String):
                yield column


# Model weights are stored as `<checksum>.pt` (worker/registry.py); the row that uses them is the
# model version whose `checksum` names them, not a `*_key` column.
MODEL_SUFFIX = ".pt"


def used_keys(session: Session, keys: list[str]) -> set[str]:
    used: set[str] = set()
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        for column in key_columns():
            used.update(session.scalars(select(column).where(column.in_(chunk))))
        checksums = [k[:64] for k in chunk if k.endswith(MODEL_SUFFIX)]
        if checksums:
            known = session.scalars(select(ModelVersion.checksum).where(ModelVersion.checksum.in_(checksums)))
            used.update(f"{checksum}{MODEL_SUFFIX}" for checksum in known)
    return used


def sweep_orphans(
    session: Session, storage: Storage, grace_s: float, *, dry_run: bool = False, now: float | None = None
) -> SweepReport:
    """Remove (or with `dry_run` only count) objects unused by every row and untouched for
    `grace_s` seconds. Safe while the app runs: see `Storage.remove_if_unused`."""
    report = SweepReport(dry_run=dry_run)
    cutoff_ns = int(((now or time.time()) - grace_s) * 1e9)
    candidates: list[tuple[str, int]] = []
    for key, mtime_ns in storage.iter_objects():
        report.scanned += 1
        if mtime_ns < cutoff_ns:
            candidates.append((key, mtime_ns))
    for i in range(0, len(candidates), CHUNK):
        chunk = candidates[i : i + CHUNK]
        used = used_keys(session, [k for k, _ in chunk])
        session.rollback()
        for key, mtime_ns in chunk:
            if key in used:
                continue
            report.orphans += 1
            if dry_run:
                continue

            def in_use(key: str = key) -> bool:
                try:
                    return bool(used_keys(session, [key]))
                finally:
                    session.rollback()

            if storage.remove_if_unused(key, in_use, expected_mtime_ns=mtime_ns):
                report.removed += 1
            else:
                report.kept += 1
    if not dry_run:
        report.temp_removed = storage.remove_stale_temp(cutoff_ns)
    report.finished_at = time.time()
    return report


def write_report(data_dir: Path, report: SweepReport) -> None:
    """Keep the last report where /metrics (another process) reads it."""
    path = Path(data_dir) / REPORT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(report)))
    tmp.replace(path)


def read_report(data_dir: Path) -> SweepReport | None:
    try:
        return SweepReport(**json.loads((Path(data_dir) / REPORT_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
