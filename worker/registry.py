"""The model registry's files and the predict worker's loaded models.

A trained model.pt is published into the object storage (app.storage: the local folder or an S3
bucket) under its content-addressed key `<sha256>.pt`: written to a temporary key or file, verified,
then published, so a worker on any machine reads the same bytes and a reader never sees half an
artifact. The database row that points at it (app.services.model_versions.register_model) records the
registry name `models/project-<pid>/run-<rid>-<hex>` (the artifact key) and the SHA-256 (the
checksum) and is written after the publish; a model object whose row never came (the worker died in
between) is removed by the orphan sweep of every stored object (app.services.objects) once it is
older than the grace period. Artifacts of earlier releases, directories
`SAGE_DATA_DIR/models/project-<pid>/run-<rid>-<hex>/model.pt`, are still read, and the reaper
sweeps the ones no version references.

`PredictorCache` keeps loaded models per version in the predict worker, verified against their
checksum on load, and a `ModelBatcher` per model runs concurrent requests as one forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from typing import Any, BinaryIO, cast

from app.services.objects import MODEL_SUFFIX
from app.storage import Storage, StorageIntegrityError, make_key

log = logging.getLogger(__name__)

MODELS_DIR = "models"
MODEL_FILE = "model.pt"
TMP_PREFIX = ".tmp-"


class ArtifactError(Exception):
    """An artifact that is missing or does not match its recorded checksum."""


@dataclass
class Artifact:
    key: str  # the registry name, e.g. models/project-3/run-7-1a2b3c4d
    checksum: str  # SHA-256 of model.pt
    object_key: str  # where the bytes are in the object storage: <checksum>.pt


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def model_object_key(checksum: str) -> str:
    return make_key(checksum, MODEL_SUFFIX)


def publish_artifact(
    storage: Storage, project_id: int, run_id: int, model_file: Path, config: dict, metrics: dict
) -> Artifact:
    """Put a trained model.pt into the object storage (streamed, verified, then published).

    `config` and `metrics` are recorded on the model version row by the caller; they are taken
    here so the signature says what an artifact is made of."""
    del config, metrics
    with open(model_file, "rb") as f:
        pause = float(os.environ.get("SAGE_TEST_PUBLISH_PAUSE_S") or 0)
        object_key = storage.put_file(
            cast(BinaryIO, _PausingReader(f, pause)) if pause > 0 else f, MODEL_SUFFIX
        )
    name = f"{MODELS_DIR}/project-{project_id}/run-{run_id}-{uuid.uuid4().hex[:8]}"
    return Artifact(key=name, checksum=object_key[:64], object_key=object_key)


class _PausingReader:
    """Fault tests only (SAGE_TEST_PUBLISH_PAUSE_S): the upload pauses after its first chunk, so a
    test can kill the worker while the artifact is half written."""

    def __init__(self, f: Any, pause_s: float) -> None:
        self.f, self.pause_s, self.reads = f, pause_s, 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 2:
            log.warning("publishing paused for %.0f s (SAGE_TEST_PUBLISH_PAUSE_S)", self.pause_s)
            time.sleep(self.pause_s)
        return self.f.read(size)


def artifact_dir(data_dir: Path, key: str) -> Path:
    """The directory of a legacy artifact key, refusing keys that leave the registry."""
    root = (data_dir / MODELS_DIR).resolve()
    path = (data_dir / key).resolve()
    if root not in path.parents:
        raise ArtifactError(f"artifact key {key!r} is outside {root}")
    return path


def verified_model_file(storage: Storage, data_dir: Path, key: str, checksum: str) -> Path:
    """A local path of the model's weights, checked against `checksum`: the storage object (an S3
    object is downloaded into the process's scratch cache), else a legacy artifact directory."""
    try:
        object_key = model_object_key(checksum)
    except ValueError as exc:
        raise ArtifactError(f"model {key}: recorded checksum {checksum!r} is not a SHA-256") from exc
    try:
        path = storage.path(object_key) if storage.exists(object_key) else None
    except StorageIntegrityError as exc:  # a download that came back corrupt
        raise ArtifactError(f"model artifact {key} is corrupt in storage: {exc}") from exc
    if path is None:
        path = artifact_dir(data_dir, key) / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(
            f"model artifact {key} is missing: no stored weights match its recorded SHA-256 "
            f"{checksum[:12]}... (neither in the object storage nor as a legacy artifact); re-train or "
            "activate another version"
        )
    actual = sha256_file(path)
    if actual != checksum:
        raise ArtifactError(
            f"model artifact {path} is corrupt: SHA-256 {actual[:12]}... but the registry recorded "
            f"{checksum[:12]}...; re-train or activate another version"
        )
    return path


def remove_artifact(storage: Storage, data_dir: Path, artifact: Artifact) -> None:
    """Remove a published artifact whose registration failed (its object, or a legacy directory)."""
    with contextlib.suppress(ValueError, OSError):
        storage.delete(artifact.object_key)
    with contextlib.suppress(ArtifactError):
        shutil.rmtree(artifact_dir(data_dir, artifact.key), ignore_errors=True)


def sweep_legacy_artifacts(data_dir: Path, known_keys: set[str], older_than_s: float) -> list[str]:
    """Remove legacy artifact directories (complete or `.tmp-`) under `data_dir/models` that no
    model version references, once they are older than `older_than_s` (younger ones may belong to a
    run that is about to commit). Model objects (`<sha256>.pt`) in the storage are swept with every
    other object by `app.services.objects.sweep_orphans`. Returns the removed artifact keys."""
    removed: list[str] = []
    cutoff = time.time() - older_than_s
    models = data_dir / MODELS_DIR
    if not models.is_dir():
        return removed
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
        self,
        data_dir: Path,
        *,
        storage: Storage,
        capacity: int,
        max_batch: int,
        wait_s: float,
        device: str = "auto",
    ) -> None:
        self.data_dir = data_dir
        self.storage = storage
        self.capacity = capacity
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.device = device
        self._items: OrderedDict[tuple[int, str], ModelBatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, str], threading.Lock] = {}

    def get(self, model_id: int, key: str, checksum: str) -> ModelBatcher:
        # Keyed on the version's checksum too, never on the id alone: an id is a row's name, the
        # checksum is what was loaded.
        entry = (model_id, checksum)
        with self._lock:
            if entry in self._items:
                self._items.move_to_end(entry)
                return self._items[entry]
            load_lock = self._loading.setdefault(entry, threading.Lock())
        with load_lock:  # one loader per version; other requests for it wait here
            with self._lock:
                if entry in self._items:
                    return self._items[entry]
            batcher = ModelBatcher(self._load(key, checksum), self.max_batch, self.wait_s)
            with self._lock:
                self._items[entry] = batcher
                self._loading.pop(entry, None)
                while len(self._items) > self.capacity:
                    _, evicted = self._items.popitem(last=False)
                    evicted.close()
            return batcher

    def _load(self, key: str, checksum: str) -> Any:
        from sage.inference import Predictor

        path = verified_model_file(self.storage, self.data_dir, key, checksum)
        started = time.perf_counter()
        predictor = Predictor.load(path, self.device)
        log.info("loaded model %s in %.2f s", key, time.perf_counter() - started)
        return predictor
