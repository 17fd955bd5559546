"""Object storage: the local folder and S3 (a real moto server over HTTP) behind one interface,
content addressing, verified multipart uploads, staging, the bounded scratch cache, presigned URLs
and `sage-studio storage migrate`."""

from __future__ import annotations

import hashlib
import io
import os

import boto3
import httpx
import pytest

from app.settings import Settings
from app.storage import (
    LocalStorage,
    S3Storage,
    StorageIntegrityError,
    StorageKeyError,
    StorageUrlError,
    migrate_objects,
    storage_for_url,
)

MiB = 1024 * 1024


def _settings(tmp_path, **extra) -> Settings:
    return Settings(env="test", data_dir=tmp_path / "data", **extra)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return storage_for_url(f"file://{tmp_path / 'objects'}", _settings(tmp_path))
    url = request.getfixturevalue("s3_storage_url")
    endpoint = request.getfixturevalue("s3_endpoint")
    return storage_for_url(
        url, _settings(tmp_path, s3_endpoint_url=endpoint, s3_multipart_threshold_bytes=5 * MiB)
    )


def _bucket_names(storage: S3Storage) -> list[str]:
    listing = storage.client.list_objects_v2(Bucket=storage.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_urls_choose_the_backend(tmp_path, s3_endpoint):
    assert isinstance(storage_for_url(f"file://{tmp_path}/x", _settings(tmp_path)), LocalStorage)
    s3 = storage_for_url("s3://bucket-a/some/prefix/", _settings(tmp_path, s3_endpoint_url=s3_endpoint))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket-a", "some/prefix")
    assert s3.cache.root == (tmp_path / "data" / "cache" / "objects").resolve()
    for bad in ("s3:///nobucket", "http://example.com/x", "file://host/path", "bucket/prefix"):
        with pytest.raises(StorageUrlError):
            storage_for_url(bad, _settings(tmp_path))


def test_put_read_delete_round_trip(storage):
    data = b"\x89PNG fake image bytes" * 50
    key = storage.put_bytes(data, ".PNG")
    assert key == hashlib.sha256(data).hexdigest() + ".png"
    assert storage.put_bytes(data, ".png") == key  # same bytes, same key, stored once
    assert storage.exists(key) and storage.size(key) == len(data)
    with storage.open(key) as f:
        assert f.read(10) == data[:10] and f.read() == data[10:]
    assert storage.read_bytes(key) == data
    assert storage.path(key).read_bytes() == data
    assert list(storage.iter_keys()) == [key]
    storage.delete(key)
    storage.delete(key)  # absent is fine
    assert not storage.exists(key) and list(storage.iter_keys()) == []
    with pytest.raises(FileNotFoundError):
        storage.open(key)
    with pytest.raises(StorageKeyError):
        storage.exists("../../etc/passwd")


def test_large_files_stream_in_verified_parts(storage, tmp_path):
    data = os.urandom(11 * MiB + 123)  # three parts of 5 MiB on S3
    key = storage.put_file(io.BytesIO(data), ".pt")
    assert key == hashlib.sha256(data).hexdigest() + ".pt"
    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage._name(key))
        assert head["ETag"].strip('"').endswith("-3"), "a multipart upload"
        assert _bucket_names(storage) == [storage._name(key)], "no temporary key left behind"
        assert list(storage.spool_dir.iterdir()) == []
    digest = hashlib.sha256()
    with storage.open(key) as f:
        while chunk := f.read(MiB):
            assert len(chunk) <= MiB
            digest.update(chunk)
    assert digest.hexdigest() == key[:64]


def test_staging_is_in_place_before_the_commit_and_leaves_nothing_on_error(storage):
    with storage.staging() as staged:
        kept = staged.put_bytes(b"kept", ".png")
        assert storage.exists(kept), "in place before the rows that point to it commit"
    assert storage.read_bytes(kept) == b"kept"
    with pytest.raises(RuntimeError), storage.staging() as staged:
        dropped = staged.put_bytes(b"dropped", ".png")
        raise RuntimeError("the transaction failed")
    if isinstance(storage, S3Storage):
        # S3 leaves a failed transaction's objects to the orphan sweep (one-second LastModified)
        assert sorted(storage.iter_keys()) == sorted([kept, dropped])
        assert sorted(_bucket_names(storage)) == sorted(storage._name(k) for k in (kept, dropped))
    else:
        assert not storage.exists(dropped)
        assert list(storage.iter_keys()) == [kept]


def test_s3_scratch_cache_is_bounded_and_checks_downloads(tmp_path, s3_storage_url, s3_endpoint):
    storage = storage_for_url(
        s3_storage_url, _settings(tmp_path, s3_endpoint_url=s3_endpoint, cache_max_bytes=3000)
    )
    keys = [storage.put_bytes(os.urandom(1000), ".bin") for _ in range(6)]
    for key in keys:
        assert storage.path(key).stat().st_size == 1000
    cached = [p for p in storage.cache.root.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in cached) <= 3000
    assert storage.cache.root / keys[-1] in cached, "the newest copy stays"

    # An object whose bytes no longer match its key (bit rot, a bad copy) is refused on download.
    storage.client.put_object(Bucket=storage.bucket, Key=storage._name(keys[0]), Body=b"rotten")
    (storage.cache.root / keys[0]).unlink(missing_ok=True)
    with pytest.raises(StorageIntegrityError):
        storage.path(keys[0])
    assert not (storage.cache.root / keys[0]).exists()


def test_presigned_url_serves_the_object(tmp_path, s3_storage_url, s3_endpoint):
    storage = storage_for_url(
        s3_storage_url, _settings(tmp_path, s3_endpoint_url=s3_endpoint, s3_presign_ttl_s=60)
    )
    key = storage.put_bytes(b"picture", ".png")
    url = storage.presigned_url(key, content_type="image/png")
    assert "Expires=" in url or "X-Amz-Expires=60" in url
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"picture"
    assert answer.headers["content-type"] == "image/png"
    assert LocalStorage(tmp_path / "local").presigned_url(key) is None


def test_migrate_copies_verifies_and_resumes(tmp_path, s3_storage_url, s3_endpoint):
    source = LocalStorage(tmp_path / "objects")
    keys = [source.put_bytes(f"object {i}".encode(), ".png") for i in range(6)]
    target = storage_for_url(s3_storage_url, _settings(tmp_path, s3_endpoint_url=s3_endpoint))
    for key in keys[:2]:  # an earlier, interrupted migration got this far
        target.put_bytes(source.read_bytes(key), ".png")
    source.path(keys[5]).write_bytes(b"bit rot")  # corrupt in the source: must not be copied
    legacy = tmp_path / "model.pt"
    legacy.write_bytes(b"legacy weights")

    report = migrate_objects(source, target, extra_files=[(legacy, ".pt")])
    assert (report["copied"], report["skipped"]) == (4, 2)
    assert [e["key"] for e in report["errors"]] == [keys[5]]
    assert sorted(target.iter_keys()) == sorted(
        [*keys[:5], hashlib.sha256(b"legacy weights").hexdigest() + ".pt"]
    )
    for key in keys[:5]:
        assert target.read_bytes(key) == source.read_bytes(key)

    # Run again: nothing to copy; with --verify-existing a corrupted target object is replaced.
    target.client.put_object(Bucket=target.bucket, Key=target._name(keys[1]), Body=b"rotten")
    again = migrate_objects(source, target, verify_existing=True)
    assert (again["copied"], again["replaced"], again["skipped"]) == (1, 1, 4)
    assert target.read_bytes(keys[1]) == source.read_bytes(keys[1])


def test_storage_migrate_command(tmp_path, s3_storage_url, s3_endpoint, monkeypatch, capsys):
    from app.cli import main
    from app.settings import get_settings

    data = tmp_path / "data"
    key = LocalStorage(data / "objects").put_bytes(b"an image", ".png")
    monkeypatch.setenv("SAGE_DATA_DIR", str(data))
    monkeypatch.setenv("SAGE_ENV", "test")
    get_settings.cache_clear()
    try:
        assert main(["storage", "migrate", "--to", s3_storage_url]) == 0
        assert '"copied": 1' in capsys.readouterr().out
        assert main(["storage", "migrate", "--to", s3_storage_url]) == 0
        assert '"skipped": 1' in capsys.readouterr().out
        assert main(["storage", "migrate", "--to", "ftp://nowhere"]) == 1
        assert "file:///path or s3://bucket/prefix" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    bucket, prefix = s3_storage_url[5:].split("/", 1)
    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=bucket, Key=f"{prefix}/{key}")[
        "Body"
    ]
    assert body.read() == b"an image"


def test_objects_an_earlier_release_left_moved_aside_go_back_in_place(tmp_path):
    """Earlier releases moved an object to .trash while deciding whether to remove it; a process
    killed in that moment left it there. The sweep's clean-up puts such a file back when its key is
    absent (a row may use it) and drops it when the key is in place."""
    storage = LocalStorage(tmp_path / "objects")
    lost, duplicate = b"only copy of a committed map", b"bytes still in place"
    lost_key = storage.put_bytes(lost, ".png")
    kept_key = storage.put_bytes(duplicate, ".png")
    trash = tmp_path / "objects" / ".trash"
    trash.mkdir()
    os.rename(storage.path(lost_key), trash / f"{lost_key}.0123abcd")
    (trash / f"{kept_key}.4567ef01").write_bytes(duplicate)
    assert not storage.exists(lost_key)
    assert storage.remove_stale_temp(cutoff_ns=0) == 0
    assert storage.read_bytes(lost_key) == lost and storage.read_bytes(kept_key) == duplicate
    assert not trash.exists()
