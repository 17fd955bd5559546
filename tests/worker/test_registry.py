"""The model registry's files (atomic publish, checksum verification, orphan sweep) and the
predict worker's request batching."""

from __future__ import annotations

import os
import threading
import time

import pytest

from worker import registry


def _publish(tmp_path, run_id=7):
    model_file = tmp_path / "trained.pt"
    model_file.write_bytes(b"weights" * 100)
    return registry.publish_artifact(
        tmp_path / "data", 3, run_id, model_file, {"epochs": 1}, {"val_accuracy": 0.5}
    )


def test_publish_is_complete_and_verified(tmp_path):
    artifact = _publish(tmp_path)
    assert artifact.key.startswith("models/project-3/run-7-")
    assert sorted(p.name for p in artifact.path.iterdir()) == [
        "config.json",
        "manifest.json",
        "metrics.json",
        "model.pt",
    ]
    assert not list(artifact.path.parent.glob(".tmp-*"))
    path = registry.verified_model_file(tmp_path / "data", artifact.key, artifact.checksum)
    assert path.read_bytes() == b"weights" * 100

    path.write_bytes(b"tampered")
    with pytest.raises(registry.ArtifactError, match="corrupt"):
        registry.verified_model_file(tmp_path / "data", artifact.key, artifact.checksum)
    with pytest.raises(registry.ArtifactError, match="outside"):
        registry.artifact_dir(tmp_path / "data", "models/../../etc")


def test_a_failed_copy_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        registry.publish_artifact(tmp_path / "data", 3, 1, tmp_path / "missing.pt", {}, {})
    assert list((tmp_path / "data" / "models" / "project-3").iterdir()) == []


def test_sweep_removes_only_old_unreferenced_artifacts(tmp_path):
    kept, orphan, young = _publish(tmp_path, 1), _publish(tmp_path, 2), _publish(tmp_path, 3)
    half = tmp_path / "data" / "models" / "project-3" / ".tmp-run-4-dead"
    half.mkdir()
    old = time.time() - 7200
    for path in (kept.path, orphan.path, half):
        os.utime(path, (old, old))
    removed = registry.sweep_orphans(tmp_path / "data", {kept.key}, older_than_s=3600)
    assert sorted(removed) == sorted([orphan.key, "models/project-3/.tmp-run-4-dead"])
    assert kept.path.exists() and young.path.exists() and not orphan.path.exists()


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
