"""Worker benchmark: prediction latency through the API against a raw forward pass, prediction while
a run trains, and the time from "train now" to the first progress event; embedded and Redis modes.

Each mode gets a fresh data folder and database, a real web server (`sage-studio serve --web-only`),
a `train` and a `predict` worker as separate processes, and a tiny annotated project (two classes,
32 px images). Run: `python bench/worker_bench.py --out bench/worker.md` (Redis mode needs Redis on
127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432; it is skipped, and says so, when they are absent).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from PIL import Image as PILImage
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # bench/common.py: the script's folder is on sys.path  # noqa: E402

from app.db import make_engine, make_session_factory, upgrade_to_head  # noqa: E402
from app.processes import child_env  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.worker.conftest import LABELS, TINY_TRAINING, tiny_image  # noqa: E402 - the worker tests' data

REDIS_URL = "redis://127.0.0.1:6379/13"
# One intra-op thread in the workers and in the raw measurement: this machine's two cores are
# shared, and a multi-threaded kernel stalls whenever another job holds a core.
TORCH_THREADS = 1
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mode:
    """One deployment: database, broker, web server and workers (stopped on exit)."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.pg_db: str | None = None
        if name == "embedded":
            database_url = f"sqlite:///{workdir / 'sage.db'}"
            broker = ""
        else:
            self.pg_db = f"sage_bench_{uuid.uuid4().hex[:8]}"
            admin = make_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.pg_db}"'))
            admin.dispose()
            database_url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{self.pg_db}"
            broker = REDIS_URL
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
        self.settings = Settings(
            env="test",
            data_dir=workdir / "data",
            database_url=database_url,
            broker_url=broker,
            secret_key="bench-secret",
            torch_threads=TORCH_THREADS,
        )
        upgrade_to_head(database_url)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, ready: str, log: str) -> None:
        env = child_env(self.settings)
        env["PYTHONPATH"] = str(ROOT)
        path = self.workdir / f"{log}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 90
        while ready not in path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{log} did not start:\n{path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def __enter__(self) -> Mode:
        self.start(
            "serve", "--web-only", "--port", str(self.port), ready="Application startup complete", log="web"
        )
        self.start("worker", "--queues", "train", ready="ready.", log="worker-train")
        self.start("worker", "--queues", "predict", ready="ready.", log="worker-predict")
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.pg_db:
            admin = make_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)'))
            admin.dispose()

    def seed(self, n: int = 32) -> tuple[int, str]:
        from app.services import annotations, images, projects, users
        from app.storage import get_storage

        engine = make_engine(self.settings.resolved_database_url)
        storage = get_storage(self.settings)
        with make_session_factory(engine)() as s:
            user = users.create_user(s, "bench", "correct horse battery", is_admin=True)
            project = projects.create_project(
                s,
                user,
                name="bench",
                labels=LABELS,
                backbone="tiny",
                image_size=32,
                training=dict(TINY_TRAINING),
            )
            files, maps = [], []
            for i in range(n):
                image_png, saliency_png = tiny_image(LABELS[i % 2], i)
                files.append(images.UploadedFile(name=f"{i}.png", data=image_png))
                maps.append((LABELS[i % 2], saliency_png))
            rows = images.upload_images(s, storage, project, user, files, max_pixels=10**7)
            for (image, _), (label, saliency) in zip(rows, maps, strict=True):
                annotations.put_annotation(
                    s, storage, image, project, user, label=label, saliency_png=saliency, if_match=None
                )
            _, token = users.create_token(s, user, "bench")
            project_id = project.id
        engine.dispose()
        return project_id, token


def first_events(
    client: httpx.Client, run_id: int, t0: float, stop_after_step: bool = True
) -> dict[str, float]:
    """Seconds from t0 to the first progress event, and to the first training-step event."""
    found: dict[str, float] = {}
    with client.stream("GET", f"/api/v1/training-runs/{run_id}/events") as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("progress", "epoch"):
                data = json.loads(line[6:])
                found.setdefault("first_progress_s", time.perf_counter() - t0)
                if data.get("phase") == "training" and data.get("step", 0) >= 1:
                    found.setdefault("first_step_s", time.perf_counter() - t0)
                    if stop_after_step:
                        break
    return found


def wait_status(client: httpx.Client, run_id: int, statuses: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/training-runs/{run_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise RuntimeError(f"run {run_id} not {statuses} after {timeout} s")


def load_raw(model_file: Path, image: bytes):
    """The same model and image, predicted in this process as the worker does (with heatmap)."""
    import torch

    from sage.inference import Predictor

    torch.set_num_threads(TORCH_THREADS)
    predictor = Predictor.load(model_file, "cpu")
    picture = PILImage.open(io.BytesIO(image)).convert("RGB")
    predictor.predict([picture], heatmaps=True)  # warm-up

    def forward() -> None:
        predictor.predict([picture], heatmaps=True)

    return forward


def latencies(
    client: httpx.Client, project_id: int, image: bytes, n: int, raw=None
) -> tuple[list[float], list[float]]:
    """API predict latencies; with `raw`, a raw forward pass timed right after each request, so
    both see the same load on a shared machine."""
    api, direct = [], []
    for _ in range(n):
        t = time.perf_counter()
        r = client.post(f"/api/v1/projects/{project_id}/predict", files={"file": ("x.png", image)})
        api.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        if raw is not None:
            t = time.perf_counter()
            raw()
            direct.append((time.perf_counter() - t) * 1000)
    return api, direct


def concurrent(mode: Mode, token: str, project_id: int, image: bytes, clients: int, per_client: int) -> dict:
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=mode.base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            for _ in range(per_client):
                t = time.perf_counter()
                r = c.post(f"/api/v1/projects/{project_id}/predict", files={"file": ("x.png", image)})
                with lock:
                    times.append((time.perf_counter() - t) * 1000)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} concurrent requests failed, e.g. {errors[0]}")
    return {
        "conc_clients": clients,
        "conc_rps": len(times) / elapsed,
        "conc_p50": statistics.median(times),
        "conc_p95": pct(times, 95),
    }


def wait_quiet(mode: Mode, project_id: int, timeout: float = 120) -> None:
    from sqlalchemy import func, select

    from app.tables import Image, ModelVersion, Prediction

    engine = make_engine(mode.settings.resolved_database_url)
    deadline = time.monotonic() + timeout
    with make_session_factory(engine)() as s:
        while time.monotonic() < deadline:
            images = s.scalar(select(func.count()).select_from(Image).where(Image.project_id == project_id))
            activated = s.scalars(select(ModelVersion.id).where(ModelVersion.activated_at.is_not(None))).all()
            counts = [
                s.scalar(select(func.count()).select_from(Prediction).where(Prediction.model_id == m))
                for m in activated
            ]
            s.rollback()
            if all(c == images for c in counts):
                break
            time.sleep(0.5)
    engine.dispose()
    time.sleep(1.0)


def measure(mode: Mode, n: int) -> dict:
    project_id, token = mode.seed()
    client = httpx.Client(base_url=mode.base, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    result: dict = {"mode": mode.name}

    # 1. "Train now" -> first progress event (first run: the train worker's pool process is warm).
    t0 = time.perf_counter()
    run = client.post(
        f"/api/v1/projects/{project_id}/training-runs", json={"training": {"progress_every": 1}}
    ).json()
    result.update(first_events(client, run["id"], t0))
    done = wait_status(client, run["id"], ("succeeded", "failed"))
    if done["status"] != "succeeded":
        raise RuntimeError(f"training failed: {done['error']}")
    result["train_s"] = done["metrics"].get("total_seconds")
    models = client.get(f"/api/v1/projects/{project_id}/models").json()
    active = next(m for m in models if m["active"])
    model_file = mode.settings.resolved_data_dir / "models"
    model_file = next(p for p in model_file.rglob("model.pt"))

    # 2. Second "train now": the worker recycled its process after the first run.
    t0 = time.perf_counter()
    run2 = client.post(
        f"/api/v1/projects/{project_id}/training-runs", json={"training": {"progress_every": 1, "epochs": 1}}
    ).json()
    second = first_events(client, run2["id"], t0)
    result["first_progress_s_2nd"] = second.get("first_progress_s")
    result["first_step_s_2nd"] = second.get("first_step_s")
    wait_status(client, run2["id"], ("succeeded", "failed", "cancelled"))
    # Keep serving the first model; let the train worker finish predicting the project's images
    # with every model that was activated, so the latency runs on a quiet worker.
    client.post(f"/api/v1/models/{active['id']}/activate").raise_for_status()
    wait_quiet(mode, project_id)

    image = tiny_image("right", 4242)[0]
    latencies(client, project_id, image, 10)  # warm-up: the predict worker loads the model
    forward = load_raw(model_file, image)
    time.sleep(1.0)  # let the predict worker's compute threads go idle
    raw = []
    for _ in range(n):
        t = time.perf_counter()
        forward()
        raw.append((time.perf_counter() - t) * 1000)
    api_idle, _ = latencies(client, project_id, image, n)

    # Concurrent clients: requests are batched into shared forward passes by the predict worker.
    result.update(concurrent(mode, token, project_id, image, clients=8, per_client=max(5, n // 4)))

    # 3. Predict while a long run trains on the same machine.
    run3 = client.post(
        f"/api/v1/projects/{project_id}/training-runs",
        json={"training": {"epochs": 10000}},  # the server bound
    ).json()
    first_events(client, run3["id"], time.perf_counter())  # wait until it really trains
    api_busy, _ = latencies(client, project_id, image, n)
    still = client.get(f"/api/v1/training-runs/{run3['id']}").json()["status"]
    client.post(f"/api/v1/training-runs/{run3['id']}/cancel")
    wait_status(client, run3["id"], ("cancelled", "failed", "succeeded"))

    result.update(
        api_p50=statistics.median(api_idle), api_p95=pct(api_idle, 95),
        raw_p50=statistics.median(raw), raw_p95=pct(raw, 95),
        busy_p50=statistics.median(api_busy), busy_p95=pct(api_busy, 95),
        busy_run_status=still, model_version=active["version"], n=n,
    )  # fmt: skip
    result["overhead_p50"] = result["api_p50"] - result["raw_p50"]
    result["busy_ratio_p95"] = result["busy_p95"] / result["api_p95"]
    client.close()
    return result


def table(results: list[dict], skipped: list[str], load: tuple) -> str:
    targets = {"embedded": 250.0, "redis": 25.0}
    lines = [
        "# Worker benchmark",
        "",
        f"One run of `python bench/worker_bench.py` on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "CPU only. Web server (`serve --web-only`), one `train` and one `predict` worker, each a separate "
        f"process, torch intra-op threads {TORCH_THREADS} (`SAGE_TORCH_THREADS`) in the workers and in the raw "
        "measurement; tiny backbone, 32 px images, 32 annotated images. Latencies in ms over "
        f"{results[0]['n'] if results else 0} sequential requests from one client over HTTP on localhost. "
        f"The machine is shared: 1-minute load average {load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end "
        "(2 = both cores busy).",
        "",
        "| mode | API predict p50 / p95 | raw forward p50 / p95 | overhead p50 (target) | busy p50 / p95 | busy p95 / idle p95 (target <= 2) | train now -> first progress event (2nd run) | -> first training step (2nd run) | 8 concurrent clients: req/s, p50 / p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['api_p50']:.1f} / {r['api_p95']:.1f} | {r['raw_p50']:.1f} / {r['raw_p95']:.1f} | "
            f"{r['overhead_p50']:.1f} (<= {targets[r['mode']]:.0f}) | {r['busy_p50']:.1f} / {r['busy_p95']:.1f} | "
            f"{r['busy_ratio_p95']:.2f} | {r['first_progress_s']:.2f} s ({r['first_progress_s_2nd']:.2f} s) | "
            f"{r.get('first_step_s', float('nan')):.2f} s ({(r.get('first_step_s_2nd') or float('nan')):.2f} s) | "
            f"{r['conc_rps']:.0f}, {r['conc_p50']:.0f} / {r['conc_p95']:.0f} |"
        )
    for s in skipped:
        lines.append(f"| {s} | skipped: service not reachable | | | | | | | |")
    lines += ["", "Against the targets:", ""]
    for r in results:
        checks = [
            ("overhead p50", r["overhead_p50"] <= targets[r["mode"]], f"{r['overhead_p50']:.1f} ms"),
            ("busy p95 <= 2x idle p95", r["busy_ratio_p95"] <= 2.0, f"{r['busy_ratio_p95']:.2f}x"),
            (
                "train now -> first progress < 3 s",
                max(r["first_progress_s"], r["first_progress_s_2nd"] or 0) < 3.0,
                f"{r['first_progress_s']:.2f} s / {r['first_progress_s_2nd']:.2f} s",
            ),
        ]
        lines.append(
            f"- {r['mode']}: "
            + "; ".join(f"{name} {'met' if ok else 'MISSED'} ({value})" for name, ok, value in checks)
        )
    lines += [
        "",
        "How to read it:",
        "",
        "- *raw forward*: `Predictor.predict([image], heatmaps=True)` in the benchmark process on the same "
        "model file and image (forward + Grad-CAM backward), what the worker runs per request, measured "
        "with the workers idle just before the API requests (interleaving them made both slower: the worker's "
        "compute threads keep spinning for a while after each forward pass). *API predict* "
        "adds upload and decode checks in the web process, the broker round trip, the overlay PNG and base64, "
        "and the result backend round trip.",
        "- *busy*: the same requests while a training run of the same project trains in the `train` worker "
        "(its processes run at `nice` 10, `SAGE_TRAIN_NICE`). The run was still running at the end of the "
        "measurement: " + ", ".join(f"{r['mode']}: {r['busy_run_status']}" for r in results) + ".",
        "- *first progress event*: from sending `POST /training-runs` to receiving the run's first `progress` "
        "event on its server-sent event stream (the data snapshot starting, right after a worker claimed the "
        "run); *first training step*: the first event after an optimisation step (`progress_every` 1). The 2nd "
        "run starts in the pool process the worker forked after the first run (recycled per run), right after "
        "the first run finished, so it also waits for the project predictions the first run's activation queued "
        "on the `train` queue (they yield to a waiting run between chunks of 32 images). The 1st run is the "
        "first request of a freshly started web process (its first import of the training options' validation).",
        "- *8 concurrent clients*: 8 threads, each sending requests back to back; the predict worker (8 "
        "threads) batches the requests that arrive while a forward pass runs into the next one.",
        "- On a shared machine the training processes' `nice` 10 also yields to other people's jobs, which "
        "slows the *first progress event* when the machine is busy; on a dedicated worker it only yields to "
        "the predict worker.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/worker.md")
    parser.add_argument("--n", type=int, default=100, help="requests per latency measurement")
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--json", help="also write the raw numbers here")
    parser.add_argument("--from-json", help="only render --out from numbers a previous run wrote with --json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        Path(args.out).write_text(table(saved["results"], saved["skipped"], tuple(saved["load"])))
        return 0
    results, skipped = [], []
    load_before = os.getloadavg()
    for name in args.modes.split(","):
        if name == "redis" and not (reachable(6379) and reachable(5432)):
            skipped.append(name)
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"worker-bench-{name}-"))
        try:
            with Mode(name, workdir) as mode:
                results.append(measure(mode, args.n))
                print(json.dumps(results[-1], indent=1), flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    load = (load_before, os.getloadavg())
    Path(args.out).write_text(table(results, skipped, load))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "skipped": skipped, "load": load}, indent=1)
        )
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
