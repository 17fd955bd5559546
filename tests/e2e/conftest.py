"""Browser tests: a real `sage-studio serve` (web server, workers, beat) on a free port, driven by
Debian's Chromium through Playwright.

One server and one database for the whole e2e session (starting the workers costs seconds); each
test uses its own images so tests stay independent. Screenshots of every page land in
test-artifacts/screenshots/.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("SAGE_CHROMIUM", "/usr/bin/chromium")
ADMIN, ANNOTATOR, OUTSIDER = "e2e-admin", "e2e-annotator", "e2e-outsider"
PASSWORD = "e2e-password-123"
LABELS = ["cat", "dog", "bird"]
IMAGE_SIZE = (320, 240)  # width, height: not square, so axis mix-ups show
N_IMAGES = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(seed: int, size=IMAGE_SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 128.0)], -1)
    arr = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class World:
    """What the e2e session seeded: the server's address and the ids tests use."""

    base_url: str
    settings: Settings
    project_id: int = 0
    image_ids: list[int] = field(default_factory=list)
    demo_project_id: int = 0
    tokens: dict[str, str] = field(default_factory=dict)

    def api(self, username: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[username]}"},
            timeout=30,
        )

    def stored_mask(self, username: str, image_id: int) -> tuple[dict, np.ndarray | None]:
        """The user's annotation of the image and its saliency map, read back through the REST API."""
        with self.api(username) as api:
            r = api.get(f"/images/{image_id}/annotation")
            r.raise_for_status()
            ann = r.json()
            if not ann["saliency_url"]:
                return ann, None
            r = api.get(f"{self.base_url}{ann['saliency_url']}")
            r.raise_for_status()
            img = PILImage.open(io.BytesIO(r.content))
            assert img.mode == "L", f"stored saliency map is mode {img.mode}, expected L"
            assert img.size == IMAGE_SIZE
            return ann, np.asarray(img)

    def snapshot(self, out: Path, project_id: int | None = None) -> tuple[dict, dict[str, str], set[str]]:
        """The training snapshot of a project (default: the painting project), what a run trains on:
        its lineage, labels.csv as {image: label}, and the names of the images with a saliency file."""
        import csv

        from app.db import make_engine, make_session_factory
        from app.services.datasets import write_dataset_folder
        from app.storage import get_storage
        from app.tables import Project

        engine = make_engine(self.settings.resolved_database_url)
        try:
            with make_session_factory(engine)() as session:
                project = session.get(Project, project_id or self.project_id)
                lineage = write_dataset_folder(session, get_storage(self.settings), project, out)
        finally:
            engine.dispose()
        labels = {
            r["image"]: r["label"] for r in csv.DictReader((out / "labels.csv").read_text().splitlines())
        }
        maps = {p.stem + ".png" for p in (out / "saliency").iterdir()}
        return lineage, labels, maps


def _seed(settings: Settings) -> dict:
    from sqlalchemy import select

    from app.db import make_engine, make_session_factory
    from app.services.images import UploadedFile, upload_images
    from app.services.projects import create_project
    from app.services.users import create_user
    from app.storage import get_storage
    from app.tables import ProjectMember

    engine = make_engine(settings.resolved_database_url)
    session = make_session_factory(engine)()
    storage = get_storage(settings)
    admin = create_user(session, ADMIN, PASSWORD, is_admin=True)
    annotator = create_user(session, ANNOTATOR, PASSWORD)
    create_user(session, OUTSIDER, PASSWORD)
    project = create_project(session, admin, name="E2E painting", labels=LABELS, description="Browser tests")
    session.add(ProjectMember(project_id=project.id, user_id=annotator.id, role="annotator"))
    session.commit()
    files = [UploadedFile(f"img{i:02d}.png", _png(i)) for i in range(N_IMAGES)]
    images = upload_images(session, storage, project, admin, files, max_pixels=settings.max_image_pixels)
    image_ids = [im.id for im, _ in images]
    assert session.scalar(select(ProjectMember.id).where(ProjectMember.user_id == annotator.id))
    session.close()
    engine.dispose()
    return {"project_id": project.id, "image_ids": image_ids}


def server_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SAGE_ENV="test",
        SAGE_DATA_DIR=str(settings.data_dir),
        SAGE_DATABASE_URL=settings.database_url,
        SAGE_SECRET_KEY=settings.secret_key,
        SAGE_HEARTBEAT_INTERVAL_S="1",
        SAGE_CANCEL_POLL_INTERVAL_S="0.5",
        PYTHONUNBUFFERED="1",
    )
    return env


def _seed_demo(settings: Settings) -> int:
    """The demo project, small and quick to train: it is what the training test trains."""
    from sqlalchemy import select

    from app.db import make_engine, make_session_factory
    from app.demo import DEMO_PROJECT, seed_demo
    from app.tables import Project

    os.environ.setdefault("SAGE_DEMO_PASSWORD", PASSWORD)
    assert seed_demo(settings, if_missing=True, n_images=40, n_annotated=12) == 0
    assert seed_demo(settings, if_missing=True) == 0  # idempotent
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as session:
        project = session.scalar(select(Project).where(Project.name == DEMO_PROJECT))
        project.training = {"epochs": 8, "batch_size": 16}
        session.commit()
        pid = project.id
    engine.dispose()
    return pid


@pytest.fixture(scope="session")
def workers(world):
    """Celery workers for both queues (`sage-studio worker`), started on first use."""
    log = open(world.settings.data_dir.parent / "workers.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--queues", "train,predict"],
        cwd=ROOT,
        env=server_env(world.settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="session")
def world(tmp_path_factory, sqlite_template) -> World:
    """A migrated SQLite database, seeded, served by `sage-studio serve` (web + workers + beat)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    root = tmp_path_factory.mktemp("e2e")
    db = root / "sage.db"
    shutil.copy(sqlite_template, db)
    settings = Settings(
        env="test", data_dir=root / "data", database_url=f"sqlite:///{db}", secret_key="e2e-secret-key"
    )
    seeded = _seed(settings)
    seeded["demo_project_id"] = _seed_demo(settings)
    port = _free_port()
    env = server_env(settings)
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed at teardown
    # The web server alone; the workers start only for the tests that need them (`workers`).
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "app.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.flush()
            proc.kill()
            pytest.fail(f"server did not start:\n{(root / 'server.log').read_text()[-4000:]}")
        time.sleep(0.2)
    w = World(base_url=base, settings=settings, **seeded)
    for user in (ADMIN, ANNOTATOR, OUTSIDER):
        r = httpx.post(f"{base}/api/v1/auth/token", data={"username": user, "password": PASSWORD}, timeout=30)
        r.raise_for_status()
        w.tokens[user] = r.json()["access_token"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield w
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, world):
    """Factory: a fresh browser context (its own cookies and IndexedDB) signed in as a user."""
    contexts = []

    def make(username: str | None = ADMIN):
        context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=world.base_url)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # type: ignore[attr-defined]
        if username:
            login(page, username)
        return page

    yield make
    for c in contexts:
        c.close()


def login(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)


def wait_for_js(page, expression: str, arg=None, timeout: float = 30.0) -> None:
    """Wait until a JS expression (or function of `arg`) is truthy in the page.

    Stands in for page.wait_for_function, whose in-page predicate is compiled with eval and so is
    refused by the pages' Content-Security-Policy (no 'unsafe-eval'); page.evaluate is not.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {expression}")
        time.sleep(0.05)


def shot(page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def open_painter(page, project_id: int, image_id: int) -> None:
    page.goto(f"/projects/{project_id}/annotate/{image_id}")
    page.wait_for_selector("body[data-ready=true]")


def stage_box(page) -> dict:
    return page.locator("#stage").bounding_box()


def image_to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) in the painter's current view."""
    view = page.evaluate("() => ({...document.querySelector('.painter-stage').sagePainter.view})")
    box = stage_box(page)
    return box["x"] + view["x"] + x * view["scale"], box["y"] + view["y"] + y * view["scale"]


def drag(page, points: list[tuple[float, float]], steps: int = 8, button: str = "left") -> None:
    """A mouse stroke through image-pixel points."""
    sx, sy = image_to_screen(page, *points[0])
    page.mouse.move(sx, sy)
    page.mouse.down(button=button)
    for x, y in points[1:]:
        tx, ty = image_to_screen(page, x, y)
        page.mouse.move(tx, ty, steps=steps)
    page.mouse.up(button=button)
