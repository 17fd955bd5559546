"""Job results in object storage: an export archive is streamed into storage from a temporary
file (never held whole in memory), here on a real S3 server (moto) with a multipart upload."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from app.settings import Settings
from app.storage import storage_for_url
from worker import jobs as worker_jobs

MiB = 1024 * 1024


def test_build_export_streams_the_archive_into_storage(tmp_path, s3_storage_url, s3_endpoint, monkeypatch):
    settings = Settings(env="test", data_dir=tmp_path / "data", s3_endpoint_url=s3_endpoint,
                        s3_multipart_threshold_bytes=5 * MiB)  # fmt: skip
    storage = storage_for_url(s3_storage_url, settings)
    payload = os.urandom(6 * MiB)  # over the multipart threshold

    def fake_export(session, data_dir, model, fmt, out: Path, storage=None):
        out.write_bytes(payload)
        return {"archive_sha256": hashlib.sha256(payload).hexdigest()}

    def refuse(*args, **kwargs):
        raise AssertionError("the archive was read whole into memory")

    monkeypatch.setattr(worker_jobs, "write_export", fake_export)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(type(storage), "put_bytes", refuse)
    built = worker_jobs.build_export(None, storage, tmp_path, None, "onnx")
    monkeypatch.undo()
    assert built["bytes"] == 6 * MiB and built["sha256"] == hashlib.sha256(payload).hexdigest()
    assert built["key"] == f"{built['sha256']}.zip"
    with storage.open(built["key"]) as fh:
        assert fh.read() == payload
