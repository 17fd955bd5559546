"""The model registry's files and the predict worker's loaded models.

Artifacts live under `SAGE_DATA_DIR/models/project-<pid>/run-<rid>-<hex>/` (model.pt, config.json,
metrics.json, manifest.json with the SHA-256 of model.pt). A directory is built under a `.tmp-`
name, fsynced, and renamed into place in one step, so a reader never sees half an artifact; the
database row that points at it (app.services.models.register_model) is written after the rename,
and an artifact whose row never came (the worker died in between) is swept by the reaper.

`PredictorCache` keeps loaded models per version in the predict worker, verified against their
checksum on load, and a `ModelBatcher` per model runs concurrent requests as one forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODELS_DIR = "models"
MODEL_FILE = "model.pt"
TMP_PREFIX = ".tmp-"


class ArtifactError(Exception):
    """An artifact that is missing or does not match its recorded checksum."""


@dataclass
class Artifact:
    key: str  # relative to the data directory, e.g. models/project-3/run-7-1a2b3c4d
    checksum: str  # SHA-256 of model.pt
    path: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def publish_artifact(
    data_dir: Path, project_id: int, run_id: int, model_file: Path, config: dict, metrics: dict
) -> Artifact:
    """Copy a trained model.pt with its config and metrics into the registry, atomically."""
    root = data_dir / MODELS_DIR / f"project-{project_id}"
    root.mkdir(parents=True, exist_ok=True)
    name = f"run-{run_id}-{uuid.uuid4().hex[:8]}"
    tmp = root / f"{TMP_PREFIX}{name}"
    tmp.mkdir()
    try:
        target = tmp / MODEL_FILE
        shutil.copyfile(model_file, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        checksum = sha256_file(target)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "metrics.json", metrics)
        _write_json(
            tmp / "manifest.json",
            {"sha256": checksum, "file": MODEL_FILE, "project_id": project_id, "run_id": run_id},
        )
        _fsync_dir(tmp)
        final = root / name
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(key=f"{MODELS_DIR}/project-{project_id}/{name}", checksum=checksum, path=final)


def artifact_dir(data_dir: Path, key: str) -> Path:
    """The directory of an artifact key, refusing keys that leave the registry."""
    root = (data_dir / MODELS_DIR).resolve()
    path = (data_dir / key).resolve()
    if root not in path.parents:
        raise ArtifactError(f"artifact key {key!r} is outside {root}")
    return path


def verified_model_file(data_dir: Path, key: str, checksum: str) -> Path:
    path = artifact_dir(data_dir, key) / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"model artifact {path} is missing; re-train or activate another version")
    actual = sha256_file(path)
    if actual != checksum:
        raise ArtifactError(
            f"model artifact {path} is corrupt: SHA-256 {actual[:12]}... but the registry recorded "
            f"{checksum[:12]}...; re-train or activate another version"
        )
    return path


def remove_artifact(data_dir: Path, key: str) -> None:
    with contextlib.suppress(ArtifactError):
        shutil.rmtree(artifact_dir(data_dir, key), ignore_errors=True)


def sweep_orphans(data_dir: Path, known_keys: set[str], older_than_s: float) -> list[str]:
    """Remove half-built (`.tmp-`) artifact directories and complete ones that no model version
    references, once they are older than `older_than_s` (younger ones may belong to a run that is
    about to commit)."""
    removed: list[str] = []
    models = data_dir / MODELS_DIR
    if not models.is_dir():
        return removed
    cutoff = time.time() - older_than_s
    for project_dir in models.iterdir():
        if not project_dir.is_dir():
            continue
        for entry in project_dir.iterdir():
            key = f"{MODELS_DIR}/{project_dir.name}/{entry.name}"
            if not entry.is_dir() or key in known_keys:
                continue
            try:
                if entry.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(key)
    return removed


# --- loaded models in the predict worker -----------------------------------------------------------


class ModelBatcher:
    """Runs concurrent predict requests for one loaded model as batched forward passes.

    Requests arriving while a batch is being computed (or within `wait_s` of the first) are run
    together, up to `max_batch` images: under load the model sees full batches, while a lone
    request waits at most `wait_s`.
    """

    def __init__(self, predictor: Any, max_batch: int, wait_s: float) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="predict-batcher", daemon=True)
        self._thread.start()
        self.batches = 0
        self.images = 0

    def predict(self, image: Any, timeout: float | None = None) -> Any:
        future: Future = Future()
        self._queue.put((image, future))
        return future.result(timeout)

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.perf_counter() + self.wait_s
            closing = False
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                    break
                batch.append(nxt)
            self._run(batch)
            if closing:
                return

    def _run(self, batch: list[tuple[Any, Future]]) -> None:
        live = [(img, fut) for img, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.predictor.predict([img for img, _ in live], heatmaps=True)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for _, fut in live:
                fut.set_exception(exc)
            return
        self.batches += 1
        self.images += len(live)
        for (_, fut), result in zip(live, results, strict=True):
            fut.set_result(result)


class PredictorCache:
    """Loaded models per version (least recently used evicted), each behind a `ModelBatcher`."""

    def __init__(
        self, data_dir: Path, *, capacity: int, max_batch: int, wait_s: float, device: str = "auto"
    ) -> None:
        self.data_dir = data_dir
        self.capacity = capacity
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.device = device
        self._items: OrderedDict[int, ModelBatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, model_id: int, key: str, checksum: str) -> ModelBatcher:
        with self._lock:
            if model_id in self._items:
                self._items.move_to_end(model_id)
                return self._items[model_id]
            load_lock = self._loading.setdefault(model_id, threading.Lock())
        with load_lock:  # one loader per version; other requests for it wait here
            with self._lock:
                if model_id in self._items:
                    return self._items[model_id]
            batcher = ModelBatcher(self._load(key, checksum), self.max_batch, self.wait_s)
            with self._lock:
                self._items[model_id] = batcher
                self._loading.pop(model_id, None)
                while len(self._items) > self.capacity:
                    _, evicted = self._items.popitem(last=False)
                    evicted.close()
            return batcher

    def _load(self, key: str, checksum: str) -> Any:
        from sage.inference import Predictor

        path = verified_model_file(self.data_dir, key, checksum)
        started = time.perf_counter()
        predictor = Predictor.load(path, self.device)
        log.info("loaded model %s in %.2f s", key, time.perf_counter() - started)
        return predictor
