"""`make load`: a locust run against a real server, then an integrity check of every acknowledged save.

Seeds a fresh data folder (SQLite; `--database-url` for PostgreSQL), starts `uvicorn` (web only:
annotation saves and gallery reads; predicting and training need workers and are not part of this
run), runs bench/locustfile.py headless, then reads back every save the server acknowledged and
compares bytes and revision. Writes a markdown table (requests/s, p50/p95/p99, errors per request
type, integrity result) to --out.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(settings, n_images: int, n_annotators: int) -> dict:
    import numpy as np
    from PIL import Image as PILImage

    from app.db import make_engine, make_session_factory, upgrade_to_head
    from app.services import images, projects, users
    from app.storage import get_storage

    upgrade_to_head(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as s:
        manager = users.create_user(s, "load-manager", "load manager password")
        project = projects.create_project(s, manager, name="load", labels=["cat", "dog"])
        files = []
        for i in range(n_images):
            arr = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            buf = io.BytesIO()
            PILImage.fromarray(arr).save(buf, format="PNG")
            files.append(images.UploadedFile(f"img{i}.png", buf.getvalue()))
        rows = images.upload_images(
            s, get_storage(settings), project, manager, files, max_pixels=settings.max_image_pixels
        )
        annotators, viewers = [], []
        for i in range(n_annotators):
            user = users.create_user(s, f"annotator{i}", "annotator password")
            projects.set_member(s, project, user.username, "annotator")
            annotators.append(users.create_token(s, user, "load")[1])
        for i in range(3):
            user = users.create_user(s, f"viewer{i}", "viewer password")
            projects.set_member(s, project, user.username, "viewer")
            viewers.append(users.create_token(s, user, "load")[1])
        checker = users.create_token(s, manager, "check")[1]
        seed = {
            "project": project.id,
            "images": [image.id for image, _ in rows],
            "width": 64,
            "height": 48,
            "annotators": annotators,
            "viewers": viewers,
            "checker": checker,
        }
    engine.dispose()
    return seed


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=25, help="20 annotators : 5 viewers by weight")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--out", default=str(ROOT / "bench" / "load.md"))
    args = parser.parse_args()

    from app.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="sage-load-"))
    settings = Settings(env="test", data_dir=work / "data", database_url=args.database_url, secret_key="load")
    seeded = seed(settings, args.images, 8)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SAGE_ENV": "test",
        "SAGE_DATA_DIR": str(settings.resolved_data_dir),
        "SAGE_DATABASE_URL": settings.resolved_database_url,
        "SAGE_SECRET_KEY": "load",
        "SAGE_SERVE_WORKERS": "0",
        "SAGE_LOAD_SEED": json.dumps(seeded),
        "SAGE_LOAD_ACKS": str(work / "acks.jsonl"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        (work / "acks.jsonl").touch()
        locust = Path(sys.executable).with_name("locust")
        subprocess.run(
            [str(locust), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", str(args.users),
             "-r", "10", "-t", f"{args.seconds}s", "--host", base, "--csv", str(work / "stats"),
             "--only-summary"],
            env=env, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        acked, verified, problems = integrity(base, seeded["checker"], work / "acks.jsonl")
    finally:
        server.terminate()
        server.wait(timeout=30)
    with open(work / "stats_stats.csv") as f:
        rows = list(csv.DictReader(f))
    database = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    lines = [
        "# Load test (`make load`)",
        "",
        f"`python bench/load_bench.py --users {args.users} --seconds {args.seconds}`: {database}, one uvicorn "
        "web process, locust headless on the same host (2 shared CPU cores). 20:5 annotators to viewers "
        "by weight; annotators save 64x48 maps with If-Match (a 409 re-reads and retries), viewers "
        "browse the gallery, image files and consensus maps. Prediction and training need workers and "
        "were not part of this run.",
        "",
        "| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['Name']} | {r['Request Count']} | {r['Failure Count']} | {float(r['Requests/s']):.1f} | "
            f"{r['50%']} | {r['95%']} | {r['99%']} |"
        )
    lines += [
        "",
        f"Integrity after the run: {acked} acknowledged saves, {verified} read back with their exact bytes "
        f"and revision, {len(problems)} problems.",
    ]
    lines += [f"- {p}" for p in problems[:20]]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
