"""Object storage for images, saliency maps and other blobs: content-addressed, written atomically.

Keys are `<sha256 of the bytes><suffix>` (for example `3f2a...9c.png`), so the same bytes are
stored once and a key says nothing a user chose. `LocalStorage` keeps them under
`SAGE_DATA_DIR/objects/ab/cd/<key>`, writing to a temporary file and renaming it into place.
An S3-compatible backend implements the same `Storage` methods.

Writes that belong to a database transaction go through `Storage.staging()`: every file is in
place (written, fsynced, renamed) before the rows that point to it commit, so a committed row never
points at a missing file, even after a crash. When the block fails, the files it created are
removed again unless another writer of the same bytes has used them meanwhile; a crash between
the write and the commit leaves a file no row uses, which the periodic sweep removes after a grace
period (`app.services.objects`).

Removing an object never races with a writer of the same content: every writer refreshes the
file's mtime when it reuses an existing object, and `remove_if_unused` moves the file aside,
re-checks that nobody touched it and that no row uses it, and puts it back otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from app.settings import Settings

_KEY_RE = re.compile(r"^[0-9a-f]{64}(\.[a-z0-9]{1,8})?$")
CHUNK = 1024 * 1024


class StorageKeyError(ValueError):
    """A key that is not of the form `<sha256><.suffix>` (never touches the file system)."""


def make_key(digest: str, suffix: str = "") -> str:
    key = f"{digest}{suffix.lower()}"
    if not _KEY_RE.match(key):
        raise StorageKeyError(f"not a storage key: {key!r}")
    return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Staging(ABC):
    """Objects written during a transaction, put in place by `promote()` or dropped by `discard()`."""

    @abstractmethod
    def put_bytes(self, data: bytes, suffix: str = "") -> str: ...

    @abstractmethod
    def promote(self) -> None: ...

    @abstractmethod
    def discard(self) -> None: ...


class Storage(ABC):
    """Content-addressed blobs. Every method takes a key returned by `put_bytes`/`staging`."""

    @abstractmethod
    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        """Store `data` now and return its key (idempotent: same bytes, same key)."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary file object for reading; raises FileNotFoundError when absent."""

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    @abstractmethod
    def path(self, key: str) -> Path:
        """A local file path for the object (backends without one download to a cache)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; absent objects are fine."""

    @abstractmethod
    def new_staging(self) -> Staging: ...

    def remove_if_unused(
        self, key: str, in_use: Callable[[], bool], expected_mtime_ns: int | None = None
    ) -> bool:
        """Remove the object unless a writer touched it or `in_use()` says a row needs it; True
        when removed. Backends without the move-aside protocol keep the object (the sweep retries)."""
        return False

    def iter_objects(self) -> Iterator[tuple[str, int]]:
        """(key, mtime in ns) of every stored object (for the orphan sweep)."""
        return iter(())

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """Writes for one transaction: in place at once (before the commit inside the block);
        removed again when the block fails, unless another writer used them meanwhile."""
        staged = self.new_staging()
        try:
            yield staged
        except BaseException:
            staged.discard()
            raise
        staged.promote()

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)


class LocalStorage(Storage):
    """Objects under `root`, sharded two levels deep by the key's first four hex digits."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.trash_dir = self.root / ".trash"  # objects being removed (same file system: renames)
        self.trash_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise StorageKeyError(f"not a storage key: {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def _temp_file(self) -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}.part"

    def _write_temp(self, data: bytes) -> Path:
        tmp = self._temp_file()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _place(self, tmp: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Rename over an existing copy: same bytes, and it revives an object that a concurrent
        # delete may have just removed.
        os.replace(tmp, target)

    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        key = make_key(sha256_hex(data), suffix)
        if not self._touch(key):
            self._place(self._write_temp(data), key)
        return key

    def _touch(self, key: str) -> bool:
        """Refresh an existing object's mtime (this writer uses it now); False when it is absent."""
        try:
            os.utime(self.path(key))
        except FileNotFoundError:
            return False
        return True

    def mtime_ns(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def remove_if_unused(
        self, key: str, in_use: Callable[[], bool], expected_mtime_ns: int | None = None
    ) -> bool:
        """Move the object aside, then remove it only if its mtime is still `expected_mtime_ns`
        (default: what it was just before) and `in_use()` is False; otherwise put it back.

        A writer that reuses the object before the move refreshed its mtime (so it is put back);
        one that comes after finds no file and writes a fresh copy. Either way no committed row is
        left pointing at a removed file."""
        target = self.path(key)
        if expected_mtime_ns is None:
            expected_mtime_ns = self.mtime_ns(key)
            if expected_mtime_ns is None:
                return False
        aside = self.trash_dir / f"{key}.{uuid.uuid4().hex}"
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return False
        try:
            keep = aside.stat().st_mtime_ns != expected_mtime_ns or in_use()
        except BaseException:
            os.replace(aside, target)
            raise
        if keep:
            os.replace(aside, target)  # same bytes as any fresher copy: replacing it is harmless
            return False
        aside.unlink(missing_ok=True)
        return True

    def iter_objects(self) -> Iterator[tuple[str, int]]:
        for first in self.root.iterdir():
            if first.name.startswith(".") or not first.is_dir():
                continue
            for path in first.glob("*/*"):
                if _KEY_RE.match(path.name):
                    with contextlib.suppress(FileNotFoundError):
                        yield path.name, path.stat().st_mtime_ns

    def put_file(self, src: BinaryIO, suffix: str = "") -> str:
        """Store a stream without holding it in memory."""
        digest = hashlib.sha256()
        tmp = self._temp_file()
        try:
            with open(tmp, "wb") as f:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            key = make_key(digest.hexdigest(), suffix)
            self._place(tmp, key)
        finally:
            tmp.unlink(missing_ok=True)
        return key

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def new_staging(self) -> LocalStaging:
        return LocalStaging(self)


class LocalStaging(Staging):
    """Objects of one transaction, written into place at once. `discard` (the transaction failed)
    removes those this staging created, unless another writer touched them since."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self._created: dict[str, int] = {}  # key -> mtime_ns right after this staging wrote it
        self._keys: list[str] = []

    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        key = make_key(sha256_hex(data), suffix)
        if key in self._keys:
            return key
        if not self.storage._touch(key):
            self.storage._place(self.storage._write_temp(data), key)
            mtime = self.storage.mtime_ns(key)
            if mtime is not None:
                self._created[key] = mtime
        self._keys.append(key)
        return key

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def promote(self) -> None:
        """Nothing to move: the files went into place before the commit."""
        self._created.clear()
        self._keys.clear()

    def discard(self) -> None:
        # Nobody else touched a file this staging created => no row can point at it.
        for key, mtime in self._created.items():
            self.storage.remove_if_unused(key, lambda: False, expected_mtime_ns=mtime)
        self._created.clear()
        self._keys.clear()


def get_storage(settings: Settings) -> Storage:
    """The storage backend for these settings: local files under `SAGE_DATA_DIR/objects`."""
    return LocalStorage(settings.resolved_data_dir / "objects")
