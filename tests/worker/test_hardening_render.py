"""Bounded heavy reads: overlays from a display-sized copy, a bounded number of renders at once,
synchronous predict without a held thread, async predict by storage key, one shared SSE poller."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import event

from app.hardening import RenderLimiter
from app.services import runs
from app.tables import Project
from tests.worker.conftest import build_world
from tests.worker.test_runs import _register, _Stack


class _Result:
    def __init__(self, ready: bool = False) -> None:
        self.id = "0123456789abcdef"
        self._ready = ready

    def ready(self) -> bool:
        return self._ready


class FakeCelery:
    """Records messages; results never become ready (a worker that is busy or gone)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list, dict]] = []

    def send_task(self, name, args=None, kwargs=None, **options):
        self.sent.append((name, list(args or []), options))
        return _Result()


@pytest.fixture
def world(settings):
    for w in build_world(_Stack(settings), n=4):
        w.client.app.state.celery = FakeCelery()
        yield w


def _activate_a_model(world) -> None:
    with world.session() as s:
        run_id = runs.create_or_join_run(s, s.get(Project, world.project_id), None, {}).run.id
        _register(s, world, run_id, "w", 0.9)


def run_async(coro):
    """Run a coroutine to completion on a thread of its own: in the whole suite the browser tests'
    session-scoped Playwright keeps an event loop running on the main thread, where asyncio.run
    refuses to start another."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _asgi(world) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.client.app), base_url="http://test", headers=world.headers
    )


def test_render_overlay_uses_a_display_sized_copy(world):
    from app.api.predictions import render_overlay
    from app.services import images as image_service
    from app.storage import get_storage
    from app.tables import Image

    storage = get_storage(world.stack.settings)
    big = PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=70)
    heat = io.BytesIO()
    PILImage.fromarray(np.full((1500, 2000), 128, dtype=np.uint8)).save(heat, format="PNG")
    heat_key = storage.put_bytes(heat.getvalue(), ".png")
    with world.session() as s:
        project = s.get(Project, world.project_id)
        owner = s.get(Image, world.image_ids[0]).uploaded_by_id
        files = [image_service.UploadedFile("big.jpg", buf.getvalue())]
        ((image, _),) = image_service.upload_images(
            s, storage, project, None, files, max_pixels=world.stack.settings.max_image_pixels
        )
        assert owner is not None
        out = PILImage.open(io.BytesIO(render_overlay(s, storage, image, heat_key, 512)))
    assert out.size == (512, 384)


def test_concurrent_renders_beyond_the_bound_answer_503(world, monkeypatch):
    from app.services import annotations as annotation_service

    def slow_consensus(session, storage, image):
        time.sleep(0.5)
        return b"\x89PNG"

    monkeypatch.setattr(annotation_service, "consensus_png", slow_consensus)
    world.client.app.state.render_limiter = RenderLimiter(slots=2, wait_s=0.1)

    async def burst():
        async with _asgi(world) as c:
            url = f"/api/v1/images/{world.image_ids[0]}/saliency.png"
            return await asyncio.gather(*(c.get(url) for _ in range(6)))

    answers = run_async(burst())
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == 2 and codes.count(503) == 4
    assert all(r.headers["retry-after"] for r in answers if r.status_code == 503)


def test_async_predict_sends_a_storage_key_not_the_image(world):
    from app.storage import get_storage

    _activate_a_model(world)
    png = io.BytesIO()
    PILImage.new("RGB", (32, 32), (10, 20, 30)).save(png, format="PNG")
    r = world.post(
        f"/api/v1/projects/{world.project_id}/predict?async=true", files={"file": ("q.png", png.getvalue())}
    )
    assert r.status_code == 202, r.text
    ((_, args, options),) = world.client.app.state.celery.sent
    job = args[0]
    assert (
        "image_b64" not in job
        and get_storage(world.stack.settings).read_bytes(job["image_key"]) == png.getvalue()
    )
    assert options["expires"] > 0


def test_waiting_sync_predicts_hold_no_threads(world, settings):
    import anyio

    _activate_a_model(world)
    world.client.app.state.settings = settings.model_copy(update={"predict_timeout_s": 3.0})
    png = io.BytesIO()
    PILImage.new("RGB", (32, 32), (10, 20, 30)).save(png, format="PNG")

    async def scenario():
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4
        async with _asgi(world) as c:
            url = f"/api/v1/projects/{world.project_id}/predict"
            predicts = [
                asyncio.create_task(c.post(url, files={"file": ("q.png", png.getvalue())})) for _ in range(8)
            ]
            await asyncio.sleep(0.8)  # all eight are waiting for a worker now
            started = time.monotonic()
            health = await c.get("/api/v1/users/me")
            elapsed = time.monotonic() - started
            answers = await asyncio.gather(*predicts)
        return health, elapsed, answers

    health, elapsed, answers = run_async(scenario())
    assert health.status_code == 200 and elapsed < 1.0
    assert all(a.status_code == 504 for a in answers)


def test_event_streams_share_one_poller(world, settings):
    with world.session() as s:
        run_id = runs.create_or_join_run(s, s.get(Project, world.project_id), None, {}).run.id
        assert runs.claim_run(s, run_id, "w")
    engine = world.client.app.state.engine
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if "training_events" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)

    def finish_later():
        time.sleep(2.0)
        with world.session() as s:
            runs.record_progress(s, run_id, "w", {"epoch": 1})
            time.sleep(0.3)
            runs.finish_run(s, run_id, "w", "succeeded")

    async def streams():
        async with _asgi(world) as c:
            url = f"/api/v1/training-runs/{run_id}/events"
            return await asyncio.gather(*(c.get(url) for _ in range(6)))

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    answers = run_async(streams())
    finisher.join()
    event.remove(engine, "before_cursor_execute", count)
    assert all(a.status_code == 200 and "event: end" in a.text for a in answers)
    # 6 streams for ~2.5 s used to poll 4 times a second each (60+ reads); now one shared poll
    # every 0.5 s plus each stream's reads when its run changed.
    assert len(statements) < 40, len(statements)


def _png(seed: int = 0) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (32, 32), (seed, 20, 30)).save(out, format="PNG")
    return out.getvalue()


def test_queued_jobs_per_project_are_capped_with_429(world):
    """SAGE_MAX_QUEUED_JOBS_PER_PROJECT bounds a project's queued batch predictions and exports:
    beyond it 429 with Retry-After and a detail naming the setting, and nothing is queued or stored.
    A job whose worker died (untouched past the stale age) stops counting."""
    from datetime import timedelta

    from app.services import jobs as job_service
    from app.tables import Job, ModelVersion, utcnow

    app = world.client.app
    app.state.settings = app.state.settings.model_copy(update={"max_queued_jobs_per_project": 2})
    _activate_a_model(world)
    url = f"/api/v1/projects/{world.project_id}/predict-batch"
    for i in range(2):
        r = world.post(url, files=[("files", (f"a{i}.png", _png(i)))])
        assert r.status_code == 202, r.text
    sent = len(app.state.celery.sent)
    r = world.post(url, files=[("files", ("c.png", _png(9)))])
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
    assert "SAGE_MAX_QUEUED_JOBS_PER_PROJECT" in r.json()["detail"]
    with world.session() as s:
        model_id = s.query(ModelVersion.id).filter_by(project_id=world.project_id).scalar()
    r = world.get(f"/api/v1/models/{model_id}/download?format=onnx")
    assert r.status_code == 429 and r.headers["retry-after"], r.text
    assert len(app.state.celery.sent) == sent
    with world.session() as s:
        assert s.query(Job).filter_by(project_id=world.project_id).count() == 2
        # one job's worker died long ago: it no longer holds a place in the queue
        job = s.query(Job).filter_by(project_id=world.project_id).first()
        job.updated_at = utcnow() - job_service.STALE_AFTER - timedelta(minutes=1)
        s.commit()
    r = world.post(url, files=[("files", ("c.png", _png(9)))])
    assert r.status_code == 202, r.text
    declared = app.openapi()["paths"]
    assert "429" in declared["/api/v1/projects/{pid}/predict-batch"]["post"]["responses"]
    assert "429" in declared["/api/v1/models/{mid}/download"]["get"]["responses"]


def test_async_predicts_per_project_are_capped_with_429(world):
    """Asynchronous predicts still pending count against the project's queue; once a result is
    ready its place frees."""
    app = world.client.app
    app.state.settings = app.state.settings.model_copy(update={"max_queued_jobs_per_project": 2})
    _activate_a_model(world)
    url = f"/api/v1/projects/{world.project_id}/predict?async=true"
    for i in range(2):
        assert world.post(url, files={"file": (f"q{i}.png", _png(i))}).status_code == 202
    r = world.post(url, files={"file": ("q.png", _png(7))})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
    assert "SAGE_MAX_QUEUED_JOBS_PER_PROJECT" in r.json()["detail"]
    assert len(app.state.celery.sent) == 2
    pending = app.state.pending_predicts._pending[world.project_id]
    pending[0][1]._ready = True  # the worker answered the first
    assert world.post(url, files={"file": ("q.png", _png(7))}).status_code == 202
    declared = app.openapi()["paths"]["/api/v1/projects/{pid}/predict"]["post"]["responses"]
    assert "429" in declared
