"""A fleet with no shared disk: the web process, two train workers and a predict worker, each with
its own empty scratch folder, on PostgreSQL + Redis + S3 (a moto server). Two projects train at
once, models are activated and predict; an audit hook in every process records any file it touches
in another process's folder, and the test fails on the first such access."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.tables import ModelVersion, TrainingRun
from tests.conftest import REDIS_HOST, REDIS_PORT, _truncate_all, free_port, require_service
from tests.worker.conftest import (
    FAILED,
    LABELS,
    REDIS_DB_WORKER,
    ROOT,
    TINY_TRAINING,
    Stack,
    _settings,
    tiny_image,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

AUDIT_DIR = Path(__file__).resolve().parent / "fleet_audit"
PROCESSES = ("web", "train-a", "train-b", "predict")


class FleetProcess(Stack):
    """One process of the fleet: its own data folder, and the audit hook loaded at start-up."""

    audit_root: Path
    audit_log: Path

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env["PYTHONPATH"] = f"{AUDIT_DIR}:{ROOT}"
        env["SAGE_AUDIT_ROOT"] = str(self.audit_root)
        env["SAGE_AUDIT_LOG"] = str(self.audit_log)
        return env


@pytest.fixture
def fleet(tmp_path, request, s3_storage_url, s3_endpoint):
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB_WORKER}"
    redis.Redis.from_url(broker).flushdb()
    database_url = request.getfixturevalue("postgres_database")
    root = tmp_path / "hosts"  # one folder per "machine"; nothing else under it
    procs: dict[str, FleetProcess] = {}
    for name in PROCESSES:
        settings = _settings(
            root / name,
            database_url,
            broker_url=broker,
            storage_url=s3_storage_url,
            s3_endpoint_url=s3_endpoint,
        )
        (root / name).mkdir(parents=True)
        proc = FleetProcess(name, settings, tmp_path)
        proc.audit_root = root
        proc.audit_log = tmp_path / f"audit-{name}.log"
        procs[name] = proc
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.stop_all()
        if request.node.stash.get(FAILED, False):
            for proc in procs.values():
                print(proc.dump_logs())
        _truncate_all(database_url)
        redis.Redis.from_url(broker).flushdb()


def _audit(proc: FleetProcess) -> list[str]:
    return proc.audit_log.read_text().splitlines() if proc.audit_log.exists() else []


def test_the_audit_hook_catches_a_foreign_read(tmp_path):
    """The detector itself: a process that reads another's folder is recorded."""
    own, other = tmp_path / "hosts" / "a", tmp_path / "hosts" / "b"
    own.mkdir(parents=True)
    other.mkdir(parents=True)
    (other / "secret.bin").write_bytes(b"x")
    (own / "mine.bin").write_bytes(b"y")
    log = tmp_path / "audit.log"
    env = {
        "PYTHONPATH": str(AUDIT_DIR),
        "SAGE_AUDIT_ROOT": str(tmp_path / "hosts"),
        "SAGE_AUDIT_LOG": str(log),
        "SAGE_DATA_DIR": str(own),
        "PATH": "/usr/bin:/bin",
    }
    code = f"open({str(own / 'mine.bin')!r}).read(); open({str(other / 'secret.bin')!r}).read()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    lines = log.read_text().splitlines()
    assert any(" OWN " in f" {line} " for line in lines)
    assert [line.split(" ", 1)[1] for line in lines if " FOREIGN " in line] == [
        f"FOREIGN open {other / 'secret.bin'}"
    ]


def test_fleet_without_shared_disk_trains_two_projects_at_once_and_predicts(fleet):
    from app.services import projects, users

    web = fleet["web"]
    engine_url = web.settings.resolved_database_url
    from app.db import make_engine, make_session_factory

    engine = make_engine(engine_url)
    factory = make_session_factory(engine)
    with factory() as s:
        user = users.create_user(s, "manager", "correct horse battery", is_admin=False)
        project_ids = [
            projects.create_project(
                s,
                user,
                name=f"fleet-{i}",
                labels=LABELS,
                backbone="tiny",
                image_size=32,
                training=dict(TINY_TRAINING),
            ).id
            for i in range(2)
        ]
        _, token = users.create_token(s, user, "fleet")

    port = free_port()
    web.start(
        "web", "serve", "--web-only", "--host", "127.0.0.1", "--port", str(port), ready="Uvicorn running"
    )
    fleet["train-a"].worker("train")
    fleet["train-b"].worker("train")
    fleet["predict"].worker("predict")

    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    for pid in project_ids:
        for label in LABELS:
            files = []
            for i in range(12):
                image_png, _ = tiny_image(label, seed=pid * 100 + i + (50 if label == "right" else 0))
                files.append(("files", (f"{label}{i}.png", image_png, "image/png")))
            r = api.post(f"/api/v1/projects/{pid}/images", files=files, data={"label": label})
            assert r.status_code == 201, r.text
    runs = []
    for pid in project_ids:
        r = api.post(f"/api/v1/projects/{pid}/training-runs", json={})
        assert r.status_code == 202, r.text
        runs.append(r.json()["id"])

    def finished():
        bodies = [api.get(f"/api/v1/training-runs/{rid}").json() for rid in runs]
        return bodies if all(b["status"] in ("succeeded", "failed", "cancelled") for b in bodies) else None

    bodies = wait_for(finished, 240, "both training runs", interval=0.5)
    assert [b["status"] for b in bodies] == ["succeeded", "succeeded"], bodies
    with factory() as s:
        rows = [s.get(TrainingRun, rid) for rid in runs]
        hosts = {r.worker_id.rsplit(":", 1)[0] for r in rows}
        assert len(hosts) == 2, f"each train worker took one run: {hosts}"
        first, second = sorted(rows, key=lambda r: r.started_at)
        assert second.started_at < first.finished_at, "the two runs trained at the same time"
        checksums = [s.get(ModelVersion, b["model_id"]).checksum for b in bodies]
        assert all(
            s.scalar(select(ModelVersion.active).where(ModelVersion.id == b["model_id"])) for b in bodies
        )
    engine.dispose()

    image_png = tiny_image("right", 4242)[0]
    for pid in project_ids:
        answer = api.post(
            f"/api/v1/projects/{pid}/predict", files={"file": ("x.png", image_png, "image/png")}
        )
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["probabilities"]) == set(LABELS)

    # The predict worker got the weights from the bucket, into its own scratch cache.
    cache = fleet["predict"].settings.resolved_data_dir / "cache" / "objects"
    assert sorted(p.name for p in cache.glob("*.pt")) == sorted(f"{c}.pt" for c in checksums)
    for name, proc in fleet.items():
        assert not (proc.settings.resolved_data_dir / "objects").exists(), f"{name} stored objects locally"
        lines = _audit(proc)
        assert any(" OWN " in f" {line} " for line in lines), f"the audit hook was not live in {name}"
        foreign = [line for line in lines if " FOREIGN " in line]
        assert foreign == [], f"{name} touched another process's folder: {foreign[:5]}"
    api.close()
