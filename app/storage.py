"""Object storage for images, saliency maps and other blobs: content-addressed, written atomically.

Keys are `<sha256 of the bytes><suffix>` (for example `3f2a...9c.png`), so the same bytes are
stored once and a key says nothing a user chose. `LocalStorage` keeps them under
`SAGE_DATA_DIR/objects/ab/cd/<key>` (or the folder of a `file://` SAGE_STORAGE_URL), writing to a
temporary file and renaming it into place. `S3Storage` keeps them in an S3-compatible bucket
(SAGE_STORAGE_URL=`s3://bucket/prefix`) with the same rules: write to a temporary key, verify,
then publish under the content-addressed key.

Writes that belong to a database transaction go through `Storage.staging()`: every file is in
place (written, fsynced, renamed) before the rows that point to it commit, so a committed row never
points at a missing file, even after a crash. When the block fails, the files it created are
removed again unless another writer of the same bytes has used them meanwhile; a crash between
the write and the commit leaves a file no row uses, which the periodic sweep removes after a grace
period (`app.services.objects`).

Removing an object never races with a writer of the same content: every writer refreshes the
file's mtime when it reuses an existing object, and `remove_if_unused` removes a file only if its
mtime is still what the remover saw and no row uses it. In the local folder the writers and the
removers of a key take the same lock (`LocalStorage._key_lock`), so that check and the unlink are
one step for every other writer, and a committed object is never out of place even for a moment.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import os
import re
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import unquote, urlparse

from app.settings import Settings

_KEY_RE = re.compile(r"^[0-9a-f]{64}(\.[a-z0-9]{1,8})?$")
CHUNK = 1024 * 1024


class StorageKeyError(ValueError):
    """A key that is not of the form `<sha256><.suffix>` (never touches the file system)."""


class StorageIntegrityError(OSError):
    """Bytes that arrived (upload) or came back (download) differ from what was sent or promised."""


class StorageUrlError(ValueError):
    """A SAGE_STORAGE_URL that is neither `file:///path` nor `s3://bucket[/prefix]`."""


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
    def put_file(self, src: BinaryIO, suffix: str = "") -> str:
        """Store a stream without holding it in memory; returns its key."""

    @abstractmethod
    def list_objects(self) -> Iterator[tuple[str, float]]:
        """(key, last modified as a Unix time) of every published object (temporary and staged
        objects excluded), in no particular order."""

    def iter_keys(self) -> Iterator[str]:
        for key, _ in self.list_objects():
            yield key

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's length in bytes; raises FileNotFoundError when absent."""

    def presigned_url(
        self, key: str, *, content_type: str | None = None, filename: str | None = None
    ) -> str | None:
        """A short-lived URL a browser can download the object from directly, or None when the
        backend has none (the local folder): the caller then streams the bytes itself."""
        return None

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
        when removed. Backends that cannot check and remove safely keep the object (the sweep retries)."""
        return False

    def remove_stale_temp(self, cutoff_ns: int) -> int:
        """Remove temporary files of writes that died (a killed process) and were last touched
        before `cutoff_ns`; the count removed. Backends without local temporary files have none."""
        return 0

    def iter_objects(self) -> Iterator[tuple[str, int]]:
        """(key, last modified in ns) of every published object (for the orphan sweep)."""
        for key, modified in self.list_objects():
            yield key, int(modified * 1e9)

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
        self.lock_dir = self.root / ".locks"  # 256 lock files, one per first byte of the key
        self.lock_dir.mkdir(parents=True, exist_ok=True)

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

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Hold the lock of `key` (striped: keys that share their first byte share a lock file): an
        exclusive flock, which also serialises the threads of one process (each call opens the file
        anew) and is released when its holder dies."""
        fd = os.open(self.lock_dir / key[:2], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _place(self, tmp: Path, key: str) -> int | None:
        """Publish the temporary file `tmp` under `key` unless the object exists, in which case this
        writer reuses it (its mtime moves on). Returns the new object's mtime (ns) when this call
        created it, None when it reused one; `tmp` is gone either way.

        Exactly one writer creates an object (a hard link fails when the name exists), and every
        other writer of the same bytes moves its mtime past the creator's, so a creator whose
        transaction failed can tell, by the mtime alone, whether anyone else uses the file. The
        creator's mtime comes from the fine-grained clock, not the kernel's coarse file times, so
        a reuse within the same clock tick still changes it."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._key_lock(key):
                created = time.time_ns()
                os.utime(tmp, ns=(created, created))
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    self._refresh(target)
                    return None
                return created
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        key = make_key(sha256_hex(data), suffix)
        if not self._touch(key):
            self._place(self._write_temp(data), key)
        return key

    def _touch(self, key: str) -> bool:
        """Move an existing object's mtime past its current value (this writer uses it now, so a
        creator's failed transaction and the sweep both leave it alone); False when it is absent."""
        path = self.path(key)
        with self._key_lock(key):
            try:
                self._refresh(path)
            except FileNotFoundError:
                return False
        return True

    @staticmethod
    def _refresh(path: Path) -> None:
        """Set the file's mtime past both its current value and the clock (under the key's lock)."""
        current = path.stat().st_mtime_ns
        later = max(time.time_ns(), current + 1)
        os.utime(path, ns=(later, later))

    def mtime_ns(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def remove_if_unused(
        self, key: str, in_use: Callable[[], bool], expected_mtime_ns: int | None = None
    ) -> bool:
        """Remove the object only if its mtime is still `expected_mtime_ns` (default: what it is
        now) and `in_use()` is False, checked and removed under the key's lock: a writer that reuses
        the object first has moved its mtime on (so it stays), one that comes after finds no file
        and writes a fresh copy. Either way no committed row is left pointing at a removed file,
        and a kept file never leaves its place."""
        target = self.path(key)
        with self._key_lock(key):
            try:
                current = target.stat().st_mtime_ns
            except FileNotFoundError:
                return False
            if expected_mtime_ns is not None and current != expected_mtime_ns:
                return False
            if in_use():
                return False
            target.unlink(missing_ok=True)
        return True

    def remove_stale_temp(self, cutoff_ns: int) -> int:
        removed = 0
        for path in self.tmp_dir.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime_ns < cutoff_ns:
                    path.unlink()
                    removed += 1
        self._restore_trash()
        return removed

    def _restore_trash(self) -> None:
        """Earlier releases moved an object to `.trash/<key>.<hex>` while deciding whether to remove
        it; one a killed process left there goes back in place when its key is absent (a row may
        use it; the sweep judges it again), else it is a duplicate and goes."""
        trash = self.root / ".trash"
        if not trash.is_dir():
            return
        for path in trash.iterdir():
            key = path.name.rsplit(".", 1)[0]
            if not _KEY_RE.match(key):
                continue
            target = self.path(key)
            with self._key_lock(key), contextlib.suppress(FileNotFoundError):
                if target.exists():
                    path.unlink()
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
        with contextlib.suppress(OSError):
            trash.rmdir()

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

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def list_objects(self) -> Iterator[tuple[str, float]]:
        for key, mtime_ns in self.iter_objects():
            yield key, mtime_ns / 1e9

    def __repr__(self) -> str:
        return f"LocalStorage({self.root})"

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
            created = self.storage._place(self.storage._write_temp(data), key)
            if created is not None:
                self._created[key] = created
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


# --- S3-compatible object storage -----------------------------------------------------------------


class _HashingSpool:
    """Copies a stream to a scratch file while computing its SHA-256 and the MD5 of each upload part,
    so the upload can be checked against the ETag S3 answers without reading the object back."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.sha256 = hashlib.sha256()
        self.part_md5s: list[bytes] = []
        self.size = 0

    def spool(self, src: BinaryIO, dst: BinaryIO) -> None:
        part = hashlib.md5(usedforsecurity=False)
        in_part = 0
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            self.sha256.update(chunk)
            self.size += len(chunk)
            view = memoryview(chunk)
            while len(view):
                take = min(len(view), self.part_size - in_part)
                part.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == self.part_size:
                    self.part_md5s.append(part.digest())
                    part, in_part = hashlib.md5(usedforsecurity=False), 0
        if in_part or not self.part_md5s:
            self.part_md5s.append(part.digest())

    def expected_etag(self, multipart: bool) -> str:
        if not multipart:
            return self.part_md5s[0].hex()
        joined = hashlib.md5(b"".join(self.part_md5s), usedforsecurity=False).hexdigest()
        return f"{joined}-{len(self.part_md5s)}"


class _S3Reader(io.RawIOBase):
    """A streaming, read-only file object over a GetObject body (never the whole object in memory)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._body.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class ScratchCache:
    """Local copies of objects under a process's scratch folder, bounded to `max_bytes`.

    Each copy is downloaded to a temporary file, checked against its key (the key is the SHA-256
    of the bytes) and renamed into place; the least recently used copies are removed when the
    folder grows past the bound. Everything in it may be deleted at any time while the process is
    stopped. A returned path stays valid until the cache needs the room: open it right away."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes
        self.tmp_dir = self.root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def get(self, key: str, fetch: Callable[[BinaryIO], None]) -> Path:
        target = self.root / key
        if target.is_file():
            with contextlib.suppress(FileNotFoundError):
                os.utime(target)  # most recently used
                return target
        self.tmp_dir.mkdir(parents=True, exist_ok=True)  # the folder may have been deleted meanwhile
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            digest = hashlib.sha256()
            with open(tmp, "wb") as f:
                fetch(cast(BinaryIO, _DigestWriter(f, digest)))
            if digest.hexdigest() != key[:64]:
                raise StorageIntegrityError(
                    f"object {key} read back with SHA-256 {digest.hexdigest()[:12]}...: the stored copy is "
                    "corrupt"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self._evict(keep=target)
        return target

    def _evict(self, keep: Path) -> None:
        with self._lock:
            entries = []
            total = 0
            for entry in os.scandir(self.root):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((st.st_mtime, st.st_size, Path(entry.path)))
                    total += st.st_size
            for _, size, path in sorted(entries):
                if total <= self.max_bytes:
                    break
                if path == keep:
                    continue
                path.unlink(missing_ok=True)
                total -= size


class _DigestWriter:
    def __init__(self, f: BinaryIO, digest: Any) -> None:
        self._f = f
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._f.write(data)


class S3Storage(Storage):
    """Objects at `s3://<bucket>/<prefix>/<key>` of an S3-compatible service, through boto3.

    Credentials and region come from the standard AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or a profile); `endpoint_url` points at MinIO, Ceph
    or another S3-compatible server. Every write goes to a temporary key under `<prefix>/.tmp/`,
    is checked (the ETag S3 answers must equal the MD5 of the bytes sent, or of each part for a
    multipart upload; where a server's ETag is not an MD5, for example with SSE-KMS, the temporary
    object is read back and hashed) and only then copied to its content-addressed key, so a
    published key always holds the bytes its name promises. Files at least `multipart_threshold`
    bytes long go up in parallel parts through boto3's transfer manager. Reads stream; `path()`
    downloads into a bounded scratch cache."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        cache_dir: Path,
        cache_max_bytes: int = 2 * 1024**3,
        multipart_threshold: int = 8 * 1024 * 1024,
        presign_ttl_s: int = 300,
        client: Any = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )
        self.part_size = max(multipart_threshold, 5 * 1024 * 1024)  # S3's smallest part
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=self.part_size
        )
        self.presign_ttl_s = presign_ttl_s
        self.cache = ScratchCache(Path(cache_dir), cache_max_bytes)
        self.spool_dir = self.cache.tmp_dir

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def _name(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise StorageKeyError(f"not a storage key: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _tmp_name(self, *parts: str) -> str:
        name = "/".join((".tmp", *parts))
        return f"{self.prefix}/{name}" if self.prefix else name

    @staticmethod
    def _missing(exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    # -- writes --------------------------------------------------------------------------------

    def _upload_verified(self, src: BinaryIO, tmp_name: str) -> tuple[str, int]:
        """Upload `src` to `tmp_name` and check what arrived; returns (sha256 hex, size)."""
        spool = _HashingSpool(self.part_size)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, spool_path = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.spool_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                spool.spool(src, f)
            self.client.upload_file(spool_path, self.bucket, tmp_name, Config=self.transfer)
        finally:
            Path(spool_path).unlink(missing_ok=True)
        multipart = spool.size >= self.transfer.multipart_threshold
        self._verify(tmp_name, spool.sha256.hexdigest(), spool.size, spool.expected_etag(multipart))
        return spool.sha256.hexdigest(), spool.size

    def _verify(self, name: str, sha256: str, size: int, etag: str) -> None:
        head = self.client.head_object(Bucket=self.bucket, Key=name)
        if head["ContentLength"] != size:
            raise StorageIntegrityError(
                f"upload of {name} arrived with {head['ContentLength']} of {size} bytes"
            )
        if head.get("ETag", "").strip('"') == etag:
            return
        digest = hashlib.sha256()  # an ETag that is not an MD5 (SSE-KMS, some servers): read back
        body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        for chunk in body.iter_chunks(CHUNK):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise StorageIntegrityError(f"upload of {name} arrived corrupt (SHA-256 mismatch)")

    def _publish(self, tmp_name: str, key: str) -> None:
        """Copy a verified temporary object to its key (server side) and drop the temporary one."""
        try:
            if not self.exists(key):
                self.client.copy(
                    {"Bucket": self.bucket, "Key": tmp_name},
                    self.bucket,
                    self._name(key),
                    Config=self.transfer,
                )
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=tmp_name)

    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        key = make_key(sha256_hex(data), suffix)
        if not self._touch(key):
            tmp = self._tmp_name(uuid.uuid4().hex)
            self._put_small(tmp, data)
            self._publish(tmp, key)
        return key

    def _touch(self, key: str) -> bool:
        """Refresh an existing object's LastModified (this writer uses it now, so the orphan sweep's
        grace period starts again); False when it is absent."""
        name = self._name(key)
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=name,
                CopySource={"Bucket": self.bucket, "Key": name},
                MetadataDirective="REPLACE",
            )
        except Exception as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def modified_ns(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            if self._missing(exc):
                return None
            raise
        return int(head["LastModified"].timestamp() * 1e9)

    def remove_if_unused(
        self, key: str, in_use: Callable[[], bool], expected_mtime_ns: int | None = None
    ) -> bool:
        """Remove the object when its LastModified is still `expected_mtime_ns` (default: what it is
        now) and `in_use()` is False, both checked just before the delete. S3 has no lock shared
        with the writers, so unlike the local folder a writer that reuses the object in the moment
        between that check and the delete can lose it; every writer refreshes LastModified when it
        reuses an object (`_touch`), and the sweep only considers objects older than its grace
        period, which keeps that moment to objects nobody has written for that long."""
        current = self.modified_ns(key)
        if current is None or (expected_mtime_ns is not None and current != expected_mtime_ns):
            return False
        if in_use():
            return False
        self.delete(key)
        return True

    def _put_small(self, name: str, data: bytes) -> None:
        if len(data) >= self.transfer.multipart_threshold:
            self._upload_verified(io.BytesIO(data), name)
            return
        response = self.client.put_object(Bucket=self.bucket, Key=name, Body=data)
        if response.get("ETag", "").strip('"') != hashlib.md5(data, usedforsecurity=False).hexdigest():
            self._verify(name, sha256_hex(data), len(data), "")

    def put_file(self, src: BinaryIO, suffix: str = "") -> str:
        tmp = self._tmp_name(uuid.uuid4().hex)
        try:
            digest, _ = self._upload_verified(src, tmp)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=tmp)
            raise
        key = make_key(digest, suffix)
        self._publish(tmp, key)
        return key

    # -- reads ---------------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"no object {key} in s3://{self.bucket}/{self.prefix}") from exc
        return cast(BinaryIO, io.BufferedReader(_S3Reader(body), CHUNK))

    def path(self, key: str) -> Path:
        name = self._name(key)

        def fetch(out: BinaryIO) -> None:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            except self.client.exceptions.NoSuchKey as exc:
                raise FileNotFoundError(f"no object {key} in s3://{self.bucket}/{self.prefix}") from exc
            for chunk in body.iter_chunks(CHUNK):
                out.write(chunk)

        return self.cache.get(key, fetch)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._name(key))["ContentLength"])
        except Exception as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from exc
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def list_objects(self) -> Iterator[tuple[str, float]]:
        start = f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                key = item["Key"][len(start) :]
                if _KEY_RE.match(key):
                    yield key, item["LastModified"].timestamp()

    def presigned_url(self, key: str, *, content_type: str | None = None, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._name(key)}
        if content_type:
            params["ResponseContentType"] = content_type
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.presign_ttl_s)

    def new_staging(self) -> S3Staging:
        return S3Staging(self)


class S3Staging(Staging):
    """Objects of one transaction, published at once (verified, under their content-addressed key)
    so they exist before the rows that point to them commit. A failed transaction leaves its
    objects to the orphan sweep (see `discard`)."""

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        self._keys: set[str] = set()

    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        key = make_key(sha256_hex(data), suffix)
        if key not in self._keys:
            self.storage.put_bytes(data, suffix)
            self._keys.add(key)
        return key

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def promote(self) -> None:
        """Nothing to publish: the objects went into place before the commit."""
        self._keys.clear()

    def discard(self) -> None:
        """Leave the objects to the orphan sweep: S3's LastModified has one-second resolution, so a
        writer that reused an object within the same second as its creator cannot be told apart
        here, and deleting could lose a file that writer's row is about to use. The sweep removes
        it once it is older than its grace period and no row uses it."""
        self._keys.clear()


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")


def storage_for_url(url: str, settings: Settings) -> Storage:
    """The backend of a storage URL: `file:///abs/path`, or `s3://bucket[/prefix]` (with
    SAGE_S3_ENDPOINT_URL for an S3-compatible server). Its scratch cache lives under the
    settings' data folder."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageUrlError(f"storage URL {url!r}: a file URL names a local folder, file:///path")
        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageUrlError(f"storage URL {url!r} names no bucket: s3://bucket/prefix")
        return S3Storage(
            parsed.netloc,
            parsed.path.strip("/"),
            endpoint_url=settings.s3_endpoint_url or None,
            cache_dir=settings.resolved_data_dir / "cache" / "objects",
            cache_max_bytes=settings.cache_max_bytes,
            multipart_threshold=settings.s3_multipart_threshold_bytes,
            presign_ttl_s=settings.s3_presign_ttl_s,
        )
    raise StorageUrlError(f"storage URL {url!r}: use file:///path or s3://bucket/prefix")


def get_storage(settings: Settings) -> Storage:
    """The storage backend for these settings: SAGE_STORAGE_URL, else local files under
    `SAGE_DATA_DIR/objects` (the embedded mode)."""
    if settings.storage_url:
        return storage_for_url(settings.storage_url, settings)
    return LocalStorage(settings.resolved_data_dir / "objects")


def migrate_objects(
    source: Storage,
    target: Storage,
    *,
    verify_existing: bool = False,
    extra_files: Iterable[tuple[Path, str]] = (),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Copy every object of `source` into `target`, streamed, each checked against its key.

    Resumable: an object already in `target` is skipped (every write there was verified before it
    was published), so an interrupted migration is finished by running it again; with
    `verify_existing` those objects are read back and hashed too, and a corrupt one is replaced.
    An object whose bytes in `source` do not hash to its key is reported and not copied.
    `extra_files`: (local file, suffix) pairs to store as well (legacy model artifacts).
    Returns {"copied", "skipped", "replaced", "bytes", "errors": [...]}."""
    report: dict[str, Any] = {"copied": 0, "skipped": 0, "replaced": 0, "bytes": 0, "errors": []}

    def say(message: str) -> None:
        if log is not None:
            log(message)

    def hashes_to_key(storage: Storage, key: str) -> bool:
        digest = hashlib.sha256()
        with storage.open(key) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == key[:64]

    def copy(open_source: Callable[[], BinaryIO], key: str) -> None:
        if target.exists(key):
            if not verify_existing or hashes_to_key(target, key):
                report["skipped"] += 1
                return
            say(f"{key}: corrupt in the target, copying it again")
            target.delete(key)
            report["replaced"] += 1
        with open_source() as src:
            stored = target.put_file(src, key[64:])
        if stored != key:
            # The source's bytes are not what the key promises: keep them out of the target.
            with contextlib.suppress(Exception):
                target.delete(stored)
            report["errors"].append({"key": key, "error": "corrupt in the source: SHA-256 mismatch"})
            say(f"{key}: corrupt in the source, not copied")
            return
        report["copied"] += 1
        report["bytes"] += target.size(key)

    for key in source.iter_keys():
        try:
            copy(functools.partial(source.open, key), key)
        except (OSError, StorageKeyError) as exc:
            report["errors"].append({"key": key, "error": f"{exc.__class__.__name__}: {exc}"})
            say(f"{key}: {exc}")
    for path, suffix in extra_files:
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256()
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            copy(functools.partial(_open_binary, Path(path)), make_key(digest.hexdigest(), suffix))
        except OSError as exc:
            report["errors"].append({"key": str(path), "error": f"{exc.__class__.__name__}: {exc}"})
    return report
