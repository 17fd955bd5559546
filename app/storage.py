"""Object storage for images, saliency maps and other blobs: content-addressed, written atomically.

Keys are `<sha256 of the bytes><suffix>` (for example `3f2a...9c.png`), so the same bytes are
stored once and a key says nothing a user chose. `LocalStorage` keeps them under
`SAGE_DATA_DIR/objects/ab/cd/<key>`, writing to a temporary file and renaming it into place.
An S3-compatible backend implements the same `Storage` methods.

Writes that belong to a database transaction go through `Storage.staging()`: files are staged
while the transaction is built and moved into place only when the block ends without error, that
is after the commit at its end; on error they are removed and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
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

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """Stage writes; promote them when the block succeeds (after the commit inside it)."""
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
        if not self.exists(key):
            self._place(self._write_temp(data), key)
        return key

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
    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self._dir = Path(tempfile.mkdtemp(prefix="staging-", dir=storage.tmp_dir))
        self._files: dict[str, Path] = {}

    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        key = make_key(sha256_hex(data), suffix)
        if key not in self._files:
            path = self._dir / key
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._files[key] = path
        return key

    @property
    def keys(self) -> list[str]:
        return list(self._files)

    def promote(self) -> None:
        for key, path in self._files.items():
            self.storage._place(path, key)
        self._files.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def discard(self) -> None:
        self._files.clear()
        shutil.rmtree(self._dir, ignore_errors=True)


def get_storage(settings: Settings) -> Storage:
    """The storage backend for these settings: local files under `SAGE_DATA_DIR/objects`."""
    return LocalStorage(settings.resolved_data_dir / "objects")
