"""Worker test plumbing: a database, a broker and REAL worker processes (`sage-studio worker`).

Two stacks: `embedded` (SQLite + the file-system broker, no servers) and `redis` (PostgreSQL +
Redis DB 12). Each test gets an app client on the same database and broker, and helpers to make a
tiny labelled and annotated project (32 px images, two classes, tiny backbone) and to wait.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from app.db import make_engine, make_session_factory
from app.settings import Settings
from tests.conftest import REDIS_DB_BASE, REDIS_HOST, REDIS_PORT, _truncate_all, require_service

REDIS_DB_WORKER = REDIS_DB_BASE + 1
ROOT = Path(__file__).resolve().parents[2]
TINY_TRAINING = {
    "method": "sage",
    "backbone": "tiny",
    "image_size": 32,
    "epochs": 2,
    "batch_size": 8,
    "device": "cpu",
}
LABELS = ["left", "right"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Stack:
    """A database + broker configuration and the processes started on it (stopped at teardown)."""

    name: str
    settings: Settings
    log_dir: Path
    procs: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        from app.processes import child_env

        env = child_env(self.settings)
        env["SAGE_LOG_LEVEL"] = "INFO"
        env["PYTHONPATH"] = str(ROOT)
        env["OMP_NUM_THREADS"] = "1"  # the suite shares two cores
        return env

    def start(self, name: str, *args: str, ready: str | None = "ready.") -> subprocess.Popen:
        log = self.log_dir / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc, log))
        if ready:
            wait_for(
                lambda: ready in log.read_text(errors="replace") or proc.poll() is not None,
                60,
                f"{name} to start (log {log})",
            )
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(proc)}")
        return proc

    def worker(self, queue: str) -> subprocess.Popen:
        return self.start(f"worker-{queue}", "worker", "--queues", queue)

    def beat(self) -> subprocess.Popen:
        return self.start("beat", "beat", ready="beat: Starting")

    def log(self, proc: subprocess.Popen) -> str:
        for _, p, path in self.procs:
            if p is proc:
                return path.read_text(errors="replace")[-6000:]
        return ""

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the process and its pool children (it leads its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for _, proc, _ in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def dump_logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}" for name, _, path in self.procs
        )


def _settings(tmp_path: Path, database_url: str, broker_url: str = "", **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "broker_url": broker_url,
        "secret_key": "test-secret-key",
        "heartbeat_interval_s": 0.5,
        "cancel_poll_interval_s": 0.2,
        "heartbeat_stale_s": 3.0,
        "reap_interval_s": 1.0,
        "retrain_check_interval_s": 3600.0,
        "predict_timeout_s": 60.0,
        "shutdown_grace_s": 5.0,
    }
    values.update(extra)
    return Settings(**values)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


def _finish(stack: Stack, request) -> None:
    stack.stop_all()
    if request.node.stash.get(FAILED, False):
        print(f"worker process logs of {request.node.name}:\n{stack.dump_logs()}")


@pytest.fixture
def embedded_stack(tmp_path, sqlite_template, request) -> Iterator[Stack]:
    path = tmp_path / "sage.db"
    shutil.copy(sqlite_template, path)
    stack = Stack("embedded", _settings(tmp_path, f"sqlite:///{path}"), tmp_path)
    try:
        yield stack
    finally:
        _finish(stack, request)


@pytest.fixture
def redis_stack(tmp_path, request) -> Iterator[Stack]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB_WORKER}"
    redis.Redis.from_url(url).flushdb()
    database_url = request.getfixturevalue("postgres_database")
    stack = Stack("redis", _settings(tmp_path, database_url, broker_url=url), tmp_path)
    try:
        yield stack
    finally:
        _finish(stack, request)
        _truncate_all(database_url)
        redis.Redis.from_url(url).flushdb()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres])])
def stack(request) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")


# --- a tiny annotated project ----------------------------------------------------------------


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def tiny_image(label: str, seed: int, size: int = 32) -> tuple[bytes, bytes]:
    """A noisy image with a bright square left or right (the class), and its saliency map."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    sal = np.zeros((size, size), dtype=np.uint8)
    x0 = 3 if label == "left" else size - 13
    y0 = int(rng.integers(3, size - 13))
    img[y0 : y0 + 10, x0 : x0 + 10] = 230
    sal[y0 - 2 : y0 + 12, x0 - 2 : x0 + 12] = 255
    return png(img), png(sal, "L")


@dataclass
class World:
    """The app client, a manager's bearer headers and a tiny annotated project."""

    stack: Stack
    client: Any
    headers: dict[str, str]
    project_id: int
    image_ids: list[int]
    session_factory: Any

    def session(self):
        return self.session_factory()

    def get(self, url: str, **kw):
        return self.client.get(url, headers=self.headers, **kw)

    def post(self, url: str, **kw):
        return self.client.post(url, headers=self.headers, **kw)


def build_world(
    stack: Stack, n: int = 24, training: dict | None = None, **project_fields: Any
) -> Iterator[World]:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services import annotations, images, projects, users
    from app.storage import get_storage

    settings = stack.settings
    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    storage = get_storage(settings)
    with factory() as s:
        user = users.create_user(s, "manager", "correct horse battery", is_admin=False)
        project = projects.create_project(
            s,
            user,
            name=f"tiny-{stack.name}",
            labels=LABELS,
            backbone="tiny",
            image_size=32,
            training=training if training is not None else dict(TINY_TRAINING),
            **project_fields,
        )
        files, maps = [], []
        for i in range(n):
            label = LABELS[i % 2]
            image_png, saliency_png = tiny_image(label, seed=i)
            files.append(images.UploadedFile(name=f"img{i:03d}.png", data=image_png))
            maps.append((label, saliency_png))
        rows = images.upload_images(s, storage, project, user, files, max_pixels=settings.max_image_pixels)
        for (image, _), (label, saliency_png) in zip(rows, maps, strict=True):
            annotations.put_annotation(
                s, storage, image, project, user, label=label, saliency_png=saliency_png, if_match=None
            )
        _, token = users.create_token(s, user, "tests")
        project_id = project.id
        image_ids = [image.id for image, _ in rows]
    app = create_app(settings)
    with TestClient(app) as client:
        yield World(stack, client, {"Authorization": f"Bearer {token}"}, project_id, image_ids, factory)
    engine.dispose()


@pytest.fixture
def world(stack) -> Iterator[World]:
    yield from build_world(stack)


def wait_run(world: World, run_id: int, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    def check():
        body = world.get(f"/api/v1/training-runs/{run_id}").json()
        return body if body["status"] in statuses else None

    try:
        return wait_for(check, timeout, f"run {run_id} to reach {statuses}", interval=0.2)
    except AssertionError:
        body = world.get(f"/api/v1/training-runs/{run_id}").json()
        raise AssertionError(f"run {run_id}: {body}\n{world.stack.dump_logs()}") from None
