"""Fault tests: kill -9 a real web process (uvicorn) or worker in the middle of a write, then check
that every acknowledged write survived, nothing half-written is referenced, `sage-studio sweep`
leaves no orphan file, and the restarted system carries on without manual steps."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from tests.worker.conftest import ROOT, Stack, build_world, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_web(stack: Stack) -> tuple[subprocess.Popen, str]:
    """A real web process (uvicorn, as `serve --web-only` runs it) on a free port."""
    port = _free_port()
    log = stack.log_dir / f"web-{len(stack.procs)}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=stack.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    stack.procs.append(("web", proc, log))
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"web exited:\n{log.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        return False

    wait_for(up, 60, "the web process to answer /healthz", interval=0.2)
    return proc, base


def sweep(stack: Stack) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "sweep", "--grace-s", "0"],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout[out.stdout.index("{") :])


def assert_no_orphans(stack: Stack, session_factory) -> None:
    """Every stored object is used by a row, and no temporary upload file is left behind."""
    from app.services.objects import used_keys
    from app.storage import get_storage

    storage = get_storage(stack.settings)
    keys = [k for k, _ in storage.iter_objects()]
    with session_factory() as s:
        used = used_keys(s, keys)
    assert set(keys) - set(used) == set(), "unreferenced objects left after the sweep"
    leftovers = [p for p in Path(stack.settings.data_dir).rglob("*.part")]
    assert leftovers == [], f"temporary files left after the sweep: {leftovers[:5]}"


def big_zip(n: int, size: int = 256) -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    lines = "image,label,split\n"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            img = io.BytesIO()
            PILImage.fromarray(arr).save(img, format="PNG")
            zf.writestr(f"images/big{i:04d}.png", img.getvalue())
            lines += f"big{i:04d}.png,{'left' if i % 2 else 'right'},train\n"
        zf.writestr("labels.csv", lines)
    return buf.getvalue()


def image_count(world, project_id: int) -> int:
    from app.tables import Image

    with world.session() as s:
        return s.scalar(select(func.count(Image.id)).where(Image.project_id == project_id))


@pytest.fixture
def small_world(embedded_stack):
    yield from build_world(embedded_stack, n=4)


def test_kill_web_during_import_is_all_or_nothing_and_sweep_leaves_no_orphan(small_world):
    world = small_world
    stack = world.stack
    proc, base = start_web(stack)
    data = big_zip(300)
    before = image_count(world, world.project_id)
    objects_root = Path(stack.settings.data_dir)
    start_files = sum(1 for _ in objects_root.rglob("*") if _.is_file())
    result: dict = {}

    def post() -> None:
        try:
            result["r"] = httpx.post(
                f"{base}/api/v1/projects/{world.project_id}/import",
                headers=world.headers,
                files={"file": ("data.zip", data, "application/zip")},
                timeout=120,
            )
        except httpx.HTTPError as exc:
            result["error"] = exc

    t = threading.Thread(target=post)
    t.start()
    # kill once the import has started writing files (the body is in, images are being stored)
    wait_for(
        lambda: sum(1 for _ in objects_root.rglob("*") if _.is_file()) > start_files + 20 or not t.is_alive(),
        60,
        "the import to start storing files",
        interval=0.02,
    )
    assert t.is_alive(), f"the import finished before the kill: {result}"
    stack.kill(proc)
    t.join(30)
    assert "error" in result, f"the request was answered despite the kill: {result}"
    after = image_count(world, world.project_id)
    assert after in (before, before + 300), f"partial import: {after - before} of 300 images"

    # the restarted web process answers, the sweep removes what the dead import left
    _, base = start_web(stack)
    assert httpx.get(f"{base}/api/v1/projects/{world.project_id}", headers=world.headers).status_code == 200
    report = sweep(stack)
    assert report["removed"] >= 0
    assert_no_orphans(stack, world.session_factory)
    # and the same import now succeeds in full
    r = httpx.post(
        f"{base}/api/v1/projects/{world.project_id}/import",
        headers=world.headers,
        files={"file": ("data.zip", data, "application/zip")},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    assert image_count(world, world.project_id) == before + 300


def random_map(rng: np.random.Generator) -> bytes:
    arr = rng.integers(1, 255, (32, 32), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_kill_web_during_annotation_saves_loses_no_acknowledged_save(small_world):
    world = small_world
    stack = world.stack
    proc, base = start_web(stack)
    acked: dict[int, list[tuple[int, str, bytes]]] = {iid: [] for iid in world.image_ids}
    stop = threading.Event()

    def annotate(iid: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=base, headers=world.headers, timeout=30) as c:
            etag = c.get(f"/api/v1/images/{iid}/annotation").headers["ETag"]
            while not stop.is_set():
                label = ["left", "right"][int(rng.integers(2))]
                png_bytes = random_map(rng)
                try:
                    r = c.put(
                        f"/api/v1/images/{iid}/annotation",
                        headers={"If-Match": etag},
                        data={"label": label},
                        files={"saliency": ("map.png", png_bytes, "image/png")},
                    )
                except httpx.HTTPError:
                    return  # the server died: this save is not acknowledged
                assert r.status_code in (200, 201), r.text
                acked[iid].append((r.json()["revision"], label, png_bytes))
                etag = r.headers["ETag"]

    threads = [threading.Thread(target=annotate, args=(iid, i)) for i, iid in enumerate(world.image_ids)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(map(len, acked.values())) >= 20, 60, "20 acknowledged saves", interval=0.01)
    stack.kill(proc)
    stop.set()
    for t in threads:
        t.join(30)
    assert sum(map(len, acked.values())) >= 20

    _, base = start_web(stack)
    with httpx.Client(base_url=base, headers=world.headers, timeout=30) as c:
        for iid, saves in acked.items():
            current = c.get(f"/api/v1/images/{iid}/annotation").json()
            assert current["revision"] >= saves[-1][0]
            revisions = {
                rev["revision"]: rev for rev in c.get(f"/api/v1/annotations/{current['id']}/revisions").json()
            }
            for revision, label, png_bytes in saves:
                assert revision in revisions, f"acknowledged revision {revision} of image {iid} lost"
                assert revisions[revision]["label"] == label
                stored = c.get(revisions[revision]["saliency_url"])
                assert stored.status_code == 200
                assert stored.content == png_bytes, f"revision {revision} of image {iid}: other bytes"
            # the system carries on: a save on the current revision is accepted
            r = c.put(
                f"/api/v1/images/{iid}/annotation",
                headers={"If-Match": f'"{current["revision"]}"'},
                data={"label": "left"},
                files={"saliency": ("map.png", random_map(np.random.default_rng(iid)), "image/png")},
            )
            assert r.status_code == 200, r.text
    sweep(stack)
    assert_no_orphans(stack, world.session_factory)


def test_kill_worker_while_publishing_the_artifact(small_world, monkeypatch):
    from app.storage import get_storage
    from app.tables import ModelVersion, TrainingRun
    from tests.worker.conftest import wait_run
    from worker.registry import verified_model_file

    world = small_world
    stack = world.stack
    stack.beat()
    stack.worker("predict")  # consumes beat's reaper jobs
    monkeypatch.setenv("SAGE_TEST_PUBLISH_PAUSE_S", "60")
    trainer = stack.worker("train")
    monkeypatch.delenv("SAGE_TEST_PUBLISH_PAUSE_S")
    run = world.post(f"/api/v1/projects/{world.project_id}/training-runs", json={}).json()
    wait_for(lambda: "publishing paused" in stack.log(trainer), 90, "the worker to start publishing")
    assert list((Path(stack.settings.data_dir) / "objects" / ".tmp").glob("*.part")), "half-written artifact"
    stack.kill(trainer)  # kill -9 the worker and its pool process, mid-publish

    # the reaper sees the heartbeat go stale (3 s here) and re-queues the run; nothing was activated
    requeued = wait_run(world, run["id"], ("queued", "failed"), timeout=30)
    assert requeued["status"] == "queued", requeued
    with world.session() as s:
        assert s.scalar(select(func.count(ModelVersion.id))) == 0, "a model of a half-published artifact"

    # a fresh worker finishes the run without manual steps; the active model is complete
    stack.worker("train")
    done = wait_run(world, run["id"], ("succeeded", "failed"), timeout=120)
    assert done["status"] == "succeeded", done
    storage = get_storage(stack.settings)
    with world.session() as s:
        active = s.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).all()
        assert len(active) == 1 and s.get(TrainingRun, run["id"]).model_id in (None, active[0].id)
        assert verified_model_file(
            storage, Path(stack.settings.resolved_data_dir), active[0].artifact_key, active[0].checksum
        )
    sweep(stack)
    assert_no_orphans(stack, world.session_factory)


class PausableProxy:
    """A TCP proxy on a free 127.0.0.1 port in front of a real server. `pause()` cuts every open
    connection and refuses new ones (accepted and closed at once) until `resume()`: an outage of
    the server as its clients see it, without touching the server other tests use."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.paused = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.paused.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self.lock:
                self.conns -= {src, dst}

    def pause(self) -> None:
        self.paused.set()
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        self.paused.clear()

    def close(self) -> None:
        self.closed.set()
        self.pause()
        self.listener.close()


@pytest.fixture
def proxied_stack(redis_stack):
    """The PostgreSQL + Redis stack, every process reaching both servers through a pausable proxy."""
    from sqlalchemy.engine import make_url

    stack = redis_stack
    db_url = make_url(stack.settings.database_url)
    broker_url = httpx.URL(stack.settings.broker_url)
    pg = PausableProxy(db_url.host or "127.0.0.1", db_url.port or 5432)
    rd = PausableProxy(broker_url.host, broker_url.port or 6379)
    stack.settings = stack.settings.model_copy(
        update={
            "database_url": db_url.set(host="127.0.0.1", port=pg.port).render_as_string(hide_password=False),
            "broker_url": str(broker_url.copy_with(host="127.0.0.1", port=rd.port)),
        }
    )
    stack.proxies = (pg, rd)
    try:
        yield stack
    finally:
        stack.stop_all()
        pg.close()
        rd.close()


@pytest.mark.redis
@pytest.mark.postgres
def test_postgres_and_redis_outage_during_a_run(proxied_stack):
    from tests.worker.conftest import wait_run

    stack = proxied_stack
    for world in build_world(stack, n=8):
        stack.beat()
        stack.worker("predict")
        stack.worker("train")
        run = world.post(
            f"/api/v1/projects/{world.project_id}/training-runs",
            json={"training": {"epochs": 60, "progress_every": 1}},
        ).json()
        wait_run(world, run["id"], ("running",), timeout=60)
        time.sleep(1.0)
        assert world.get(f"/api/v1/training-runs/{run['id']}").json()["status"] == "running"
        for proxy in stack.proxies:
            proxy.pause()
        time.sleep(10)
        for proxy in stack.proxies:
            proxy.resume()
        done = wait_run(world, run["id"], ("succeeded", "failed", "cancelled"), timeout=150)
        assert done["status"] == "succeeded", f"{done}\n{stack.dump_logs()}"
        assert world.get(f"/api/v1/projects/{world.project_id}/models").json()[0]["active"] is True
