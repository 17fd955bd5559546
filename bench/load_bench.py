"""`make load`: locust against the full stack, then an integrity check of every acknowledged save.

For each mode it seeds a fresh data folder and database, starts the product the way it runs
(`python -m worker serve`: the web server with a worker per queue and beat as supervised
children), trains one tiny model so predictions work, starts one manual training run, then runs
bench/locustfile.py headless (annotators saving maps with If-Match, viewers browsing galleries,
consensus maps, stored predictions and overlays, clients predicting) while that run and beat's
periodic retrain (short check interval, small retrain_min_new) train. Afterwards it reads back every
save the server acknowledged and compares bytes and revision.

Modes: `embedded` (SQLite + the file-system broker) and `production` (a fresh PostgreSQL database
on 127.0.0.1:5432, created and dropped here, + Redis db SAGE_LOAD_REDIS_DB, default 10).
Writes one markdown table per mode to --out; exits 1 on a 5xx or an integrity problem.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("SAGE_LOAD_POSTGRES_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_DB = int(os.environ.get("SAGE_LOAD_REDIS_DB", "10"))
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(arr) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def seed(settings, n_images: int, n_annotators: int, retrain_min_new: int) -> dict:
    import numpy as np

    from app.db import make_engine, make_session_factory, upgrade_to_head
    from app.services import images, projects, users
    from app.storage import get_storage

    upgrade_to_head(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as s:
        manager = users.create_user(s, "load-manager", "load manager password")
        project = projects.create_project(
            s,
            manager,
            name="load",
            labels=["cat", "dog"],
            backbone="tiny",
            image_size=32,
            training={"epochs": 2, "batch_size": 16},
            retrain_enabled=True,
            retrain_min_new=retrain_min_new,
        )
        files = []
        for i in range(n_images):
            arr = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            files.append(images.UploadedFile(f"img{i}.png", _png(arr)))
        rows = images.upload_images(
            s, get_storage(settings), project, manager, files, max_pixels=settings.max_image_pixels
        )

        def tokens(prefix: str, n: int, role: str) -> list[str]:
            out = []
            for i in range(n):
                user = users.create_user(s, f"{prefix}{i}", f"{prefix} password")
                projects.set_member(s, project, user.username, role)
                out.append(users.create_token(s, user, "load")[1])
            return out

        seeded = {
            "project": project.id,
            "images": [image.id for image, _ in rows],
            "width": 64,
            "height": 48,
            "annotators": tokens("annotator", n_annotators, "annotator"),
            "viewers": tokens("viewer", 3, "viewer"),
            "predictors": tokens("predictor", 2, "viewer"),
            "checker": users.create_token(s, manager, "check")[1],
        }
    engine.dispose()
    return seeded


def integrity(base: str, token: str, acks_path: Path) -> tuple[int, int, list[str]]:
    """(acknowledged saves, verified, problems): each ack's revision must serve exactly its bytes."""
    problems: list[str] = []
    acks = [json.loads(line) for line in acks_path.read_text().splitlines() if line.strip()]
    ok = 0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        for ack in acks:
            r = c.get(f"/api/v1/annotations/{ack['aid']}/saliency.png", params={"revision": ack["revision"]})
            if r.status_code != 200:
                problems.append(f"annotation {ack['aid']} revision {ack['revision']}: {r.status_code}")
            elif r.content != bytes.fromhex(ack["png"]):
                problems.append(f"annotation {ack['aid']} revision {ack['revision']}: different bytes")
            else:
                ok += 1
    return len(acks), ok, problems


def wait_run(c: httpx.Client, rid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = c.get(f"/api/v1/training-runs/{rid}").json()
        if run["status"] in TERMINAL or time.monotonic() > deadline:
            return run
        time.sleep(1)


def pretrain(base: str, seeded: dict, timeout: float) -> dict:
    """Annotate a dozen images (both labels) and train the first model, so predict has one."""
    import numpy as np

    ann = {"Authorization": f"Bearer {seeded['annotators'][0]}"}
    with httpx.Client(base_url=base, timeout=60) as c:
        for n, iid in enumerate(seeded["images"][:12]):
            png = _png(np.full((seeded["height"], seeded["width"]), 40 + n, dtype=np.uint8))
            r = c.put(
                f"/api/v1/images/{iid}/annotation",
                headers=ann,
                data={"label": "cat" if n % 2 else "dog"},
                files={"saliency": ("m.png", png, "image/png")},
            )
            r.raise_for_status()
        c.headers["Authorization"] = f"Bearer {seeded['checker']}"
        r = c.post(f"/api/v1/projects/{seeded['project']}/training-runs", json={})
        r.raise_for_status()
        run = wait_run(c, r.json()["id"], timeout)
        if run["status"] != "succeeded":
            raise RuntimeError(f"the first training run did not succeed: {run['status']} {run.get('error')}")
        models = c.get(f"/api/v1/projects/{seeded['project']}/models").json()
        if not any(m.get("is_active") or m.get("active") for m in models):
            raise RuntimeError(f"no active model after the first run: {models}")
        return run


def start_server(env: dict, log: Path, base: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "serve", "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1]],
        env=env,
        cwd=ROOT,
        stdout=open(log, "w"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"serve did not answer /healthz; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=40)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    from app.settings import Settings

    work = Path(tempfile.mkdtemp(prefix=f"sage-load-{mode}-"))
    database_url, extra, drop = "", {}, None
    if mode == "production":
        import redis
        from sqlalchemy import text

        from app.db import make_engine

        name = f"sage_load_{uuid.uuid4().hex[:10]}"
        admin = make_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        database_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
        redis.Redis.from_url(broker).flushdb()
        extra = {"SAGE_BROKER_URL": broker, "SAGE_SERVE_WORKERS": "1"}
    try:
        settings = Settings(env="test", data_dir=work / "data", database_url=database_url, secret_key="load")
        seeded = seed(settings, args.images, 8, args.retrain_min_new)
        seeded["weights"] = {
            "annotator": args.annotators,
            "viewer": args.viewers,
            "predictor": args.predictors,
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "SAGE_ENV": "test",
            "SAGE_DATA_DIR": str(settings.resolved_data_dir),
            "SAGE_DATABASE_URL": settings.resolved_database_url,
            "SAGE_SECRET_KEY": "load",
            "SAGE_RETRAIN_CHECK_INTERVAL_S": str(args.retrain_interval),
            "SAGE_HEARTBEAT_INTERVAL_S": "2",
            "SAGE_LOAD_SEED": json.dumps(seeded),
            "SAGE_LOAD_ACKS": str(work / "acks.jsonl"),
            "SAGE_LOAD_STATUSES": str(work / "statuses.json"),
            **extra,
        }
        server = start_server(env, work / "serve.log", base)
        try:
            t0 = time.monotonic()
            pretrain(base, seeded, args.pretrain_timeout)
            pretrain_s = time.monotonic() - t0
            with httpx.Client(
                base_url=base, timeout=30, headers={"Authorization": f"Bearer {seeded['checker']}"}
            ) as c:
                before = {
                    r["id"] for r in c.get(f"/api/v1/projects/{seeded['project']}/training-runs").json()
                }
                c.post(f"/api/v1/projects/{seeded['project']}/training-runs", json={}).raise_for_status()
            (work / "acks.jsonl").touch()
            locust = Path(sys.executable).with_name("locust")
            t_window = time.monotonic()
            subprocess.run(
                [str(locust), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", str(args.users),
                 "-r", "10", "-t", f"{args.seconds}s", "--host", base, "--csv", str(work / "stats"),
                 "--only-summary", "--stop-timeout", "10"],
                env=env, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            window_s = time.monotonic() - t_window
            acked, verified, problems = integrity(base, seeded["checker"], work / "acks.jsonl")
            with httpx.Client(
                base_url=base, timeout=30, headers={"Authorization": f"Bearer {seeded['checker']}"}
            ) as c:
                runs = [r for r in c.get(f"/api/v1/projects/{seeded['project']}/training-runs").json()
                        if r["id"] not in before]  # fmt: skip
        finally:
            stop_server(server)
        with open(work / "stats_stats.csv") as f:
            rows = list(csv.DictReader(f))
        statuses_file = work / "statuses.json"
        statuses = json.loads(statuses_file.read_text()) if statuses_file.exists() else {}
        return {
            "mode": mode,
            "rows": rows,
            "statuses": statuses,
            "acked": acked,
            "verified": verified,
            "problems": problems,
            "runs": runs,
            "pretrain_s": pretrain_s,
            "window_s": window_s,
            "log": str(work / "serve.log"),
        }
    finally:
        if drop is not None:
            drop()


def split_statuses(statuses: dict[str, int], name: str) -> tuple[int, int, str]:
    """(5xx, shed 503/429 with Retry-After, other non-2xx as 'code×n') for one request type."""
    five = shed = 0
    other = []
    for key, n in sorted(statuses.items()):
        req, code = key.rsplit("|", 1)
        if name != "Aggregated" and req != name:
            continue
        if code.endswith("-shed"):
            shed += n
        elif code.startswith("5"):
            five += n
        elif name != "Aggregated":
            other.append(f"{code}×{n}" if code != "0" else f"connection error×{n}")
    return five, shed, ", ".join(other) or "-"


def table(result: dict) -> list[str]:
    label = {
        "embedded": "Embedded: SQLite + file-system broker",
        "production": "Production: PostgreSQL + Redis",
    }
    lines = [
        f"## {label[result['mode']]}",
        "",
        "| request | requests | req/s | p50 ms | p95 ms | p99 ms | 5xx | shed (503/429) | other non-2xx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        five, shed, other = split_statuses(result["statuses"], r["Name"])
        name = "**all**" if r["Name"] == "Aggregated" else r["Name"]
        lines.append(
            f"| {name} | {r['Request Count']} | {float(r['Requests/s']):.1f} | {r['50%']} | {r['95%']} | "
            f"{r['99%']} | {five} | {shed} | {other} |"
        )
    runs = result["runs"]
    by = {}
    for run in runs:
        by.setdefault((run["reason"], run["status"]), 0)
        by[(run["reason"], run["status"])] += 1
    done = ", ".join(f"{n} {reason} {status}" for (reason, status), n in sorted(by.items())) or "none"
    lines += [
        "",
        f"Training during the window ({result['window_s']:.0f} s): {len(runs)} runs started "
        f"({done}); {sum(r['status'] == 'succeeded' for r in runs)} succeeded. The first model "
        f"(before the window) took {result['pretrain_s']:.0f} s from annotations to active.",
        "",
        f"Integrity after the run: {result['acked']} acknowledged saves, {result['verified']} read back "
        f"with their exact bytes and revision, {len(result['problems'])} problems.",
    ]
    lines += [f"- {p}" for p in result["problems"][:20]]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=27, help="split 20:5:2 annotators:viewers:predictors")
    parser.add_argument("--annotators", type=int, default=20, help="weight of annotators")
    parser.add_argument("--viewers", type=int, default=5, help="weight of viewers")
    parser.add_argument("--predictors", type=int, default=2, help="weight of predicting clients")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument(
        "--modes", default="embedded,production", help="comma-separated: embedded, production"
    )
    parser.add_argument("--retrain-interval", type=float, default=5.0, help="SAGE_RETRAIN_CHECK_INTERVAL_S")
    parser.add_argument("--retrain-min-new", type=int, default=10)
    parser.add_argument("--pretrain-timeout", type=float, default=300)
    parser.add_argument("--out", default=str(ROOT / "bench" / "load.md"))
    args = parser.parse_args(argv)

    results = [run_mode(mode, args) for mode in args.modes.split(",")]
    lines = [
        "# Load test (`make load`)",
        "",
        f"`python bench/load_bench.py --users {args.users} --seconds {args.seconds} --modes {args.modes}`: "
        "for each mode a fresh database and `python -m worker serve` (web server, a worker per queue "
        "and beat), locust headless on the same host (2 CPU cores shared with other work, run with "
        f"`nice`). Users by weight {args.annotators}:{args.viewers}:{args.predictors}: annotators save "
        "64x48 maps with If-Match (a 409 re-reads and retries), viewers browse the gallery, image files, "
        "consensus maps, the predictions gallery and prediction overlays, predicting clients POST a "
        "64x48 PNG to the synchronous predict route. Before the window one tiny model (32 px, 2 epochs) "
        "is trained so predict has an active model; at the start of the window one manual run is "
        f"started, and beat checks for retraining every {args.retrain_interval:g} s "
        f"(retrain_min_new {args.retrain_min_new}). 5xx counts exclude 503/429 answers carrying "
        "Retry-After (the render/predict limiters shedding load), which are counted separately. "
        "Other non-2xx: 409/428 are If-Match conflicts that the annotator resolves; 404 on "
        "saliency/overlay means nothing stored for that image yet.",
        "",
    ]
    for result in results:
        lines += table(result)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    bad = any(r["problems"] or split_statuses(r["statuses"], "Aggregated")[0] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
