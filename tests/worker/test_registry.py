"""The model registry's files (atomic publish, checksum verification, orphan sweep) and the
predict worker's request batching."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from worker import registry


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The object storage models are published to: the local folder, or a bucket on moto's S3."""
    from app.settings import Settings
    from app.storage import LocalStorage, storage_for_url

    if request.param == "local":
        return LocalStorage(tmp_path / "data" / "objects")
    url = request.getfixturevalue("s3_storage_url")
    settings = Settings(
        env="test", data_dir=tmp_path / "data", s3_endpoint_url=request.getfixturevalue("s3_endpoint")
    )
    return storage_for_url(url, settings)


def _publish(storage, tmp_path, run_id=7, payload=None):
    model_file = tmp_path / f"trained-{run_id}.pt"
    model_file.write_bytes(payload or b"weights" * 100 + bytes([run_id]))
    return registry.publish_artifact(storage, 3, run_id, model_file, {"epochs": 1}, {"val_accuracy": 0.5})


def test_publish_is_content_addressed_and_verified(storage, tmp_path):
    artifact = _publish(storage, tmp_path)
    data = b"weights" * 100 + bytes([7])
    assert artifact.key.startswith("models/project-3/run-7-")
    assert artifact.checksum == hashlib.sha256(data).hexdigest()
    assert list(storage.iter_keys()) == [f"{artifact.checksum}.pt"]
    path = registry.verified_model_file(storage, tmp_path / "data", artifact.key, artifact.checksum)
    assert path.read_bytes() == data

    path.write_bytes(b"tampered")  # the stored file (local) or the scratch copy (S3)
    with pytest.raises(registry.ArtifactError, match="corrupt"):
        registry.verified_model_file(storage, tmp_path / "data", artifact.key, artifact.checksum)
    with pytest.raises(registry.ArtifactError, match="missing"):
        registry.verified_model_file(storage, tmp_path / "data", artifact.key, "1" * 64)
    with pytest.raises(registry.ArtifactError, match="outside"):
        registry.artifact_dir(tmp_path / "data", "models/../../etc")


def test_a_legacy_artifact_directory_is_still_read(tmp_path):
    from app.storage import LocalStorage

    legacy = tmp_path / "data" / "models" / "project-3" / "run-1-abcd"
    legacy.mkdir(parents=True)
    (legacy / "model.pt").write_bytes(b"old weights")
    checksum = hashlib.sha256(b"old weights").hexdigest()
    storage = LocalStorage(tmp_path / "data" / "objects")
    path = registry.verified_model_file(storage, tmp_path / "data", "models/project-3/run-1-abcd", checksum)
    assert path == legacy / "model.pt"


def test_a_failed_copy_leaves_nothing(storage, tmp_path):
    with pytest.raises(FileNotFoundError):
        registry.publish_artifact(storage, 3, 1, tmp_path / "missing.pt", {}, {})
    assert list(storage.iter_keys()) == []


def test_reaper_sweep_removes_only_old_unreferenced_legacy_directories(tmp_path):
    """Legacy artifact folders go once old and unreferenced; model objects in the storage are left
    to the orphan sweep of every object (tests/api/test_integrity.py), which checks rows again."""
    from app.storage import LocalStorage

    storage = LocalStorage(tmp_path / "data" / "objects")
    orphan = _publish(storage, tmp_path, 2)
    legacy = tmp_path / "data" / "models" / "project-3"
    for name in (".tmp-run-4-dead", "run-5-gone", "run-6-kept", "run-7-young"):
        (legacy / name).mkdir(parents=True)
    old = time.time() - 7200
    for path in (
        storage.path(orphan.object_key),
        *(legacy / n for n in (".tmp-run-4-dead", "run-5-gone", "run-6-kept")),
    ):
        os.utime(path, (old, old))
    known = {"models/project-3/run-6-kept"}
    removed = registry.sweep_legacy_artifacts(tmp_path / "data", known, older_than_s=3600)
    assert sorted(removed) == ["models/project-3/.tmp-run-4-dead", "models/project-3/run-5-gone"]
    assert sorted(p.name for p in legacy.iterdir()) == ["run-6-kept", "run-7-young"]
    assert storage.exists(orphan.object_key)


class SlowPredictor:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images, heatmaps=True):
        self.calls.append(len(images))
        time.sleep(0.05)
        if "boom" in images:
            raise RuntimeError("boom")
        return [f"label-{i}" for i in images]


def test_concurrent_requests_are_batched(tmp_path):
    predictor = SlowPredictor()
    batcher = registry.ModelBatcher(predictor, max_batch=8, wait_s=0.002)
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = batcher.predict(i, timeout=10)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"label-{i}" for i in range(20)}
    assert sum(predictor.calls) == 20 and max(predictor.calls) > 1 and len(predictor.calls) < 20
    assert all(n <= 8 for n in predictor.calls)

    with pytest.raises(RuntimeError, match="boom"):
        batcher.predict("boom", timeout=10)
    assert batcher.predict(1, timeout=10) == "label-1"  # the batcher survives an error
    batcher.close()
