"""Shared test plumbing: databases (SQLite and PostgreSQL), Redis, settings and an app client.

A test that needs a service skips with the reason when the service is unreachable, unless
SAGE_REQUIRE_SERVICES=1 (as in CI), where it fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db import make_engine, make_session_factory, upgrade_to_head
from app.settings import Settings
from app.tables import Base

POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_ADMIN_URL = os.environ.get(
    "SAGE_TEST_POSTGRES_URL", f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
)
# Redis database numbers: each user of Redis in the suite takes its own, flushed before use.
# SAGE_TEST_REDIS_DB moves the block (fixture, worker stack) so two checkouts can test at once.
REDIS_DB_BASE = int(os.environ.get("SAGE_TEST_REDIS_DB", "11"))
REDIS_DB_FIXTURE = REDIS_DB_BASE
REQUIRE_SERVICES = os.environ.get("SAGE_REQUIRE_SERVICES", "") not in ("", "0", "false")
# SAGE_TEST_STORAGE=s3 runs the tests that use the `settings` fixture against a moto S3 server.
TEST_STORAGE = os.environ.get("SAGE_TEST_STORAGE", "local")


def service_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, with SAGE_REQUIRE_SERVICES=1, fail) when a service does not answer."""
    if service_reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and SAGE_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(f"{message} (set SAGE_REQUIRE_SERVICES=1 to fail instead of skipping)")


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite file; each test gets its own copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_to_head(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test session, migrated to head, dropped at the end."""
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"sage_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade_to_head(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate_all(url: str) -> None:
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty database at the migration head: a fresh SQLite copy, or the session's PostgreSQL
    database emptied after the test (real worker processes need committed rows, so tests are
    isolated by truncation rather than by a rolled-back transaction)."""
    if request.param == "sqlite":
        path = tmp_path / "sage.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_database")
        yield url
        _truncate_all(url)


@pytest.fixture
def settings(database_url, tmp_path, request) -> Settings:
    storage_url = request.getfixturevalue("s3_storage_url") if TEST_STORAGE == "s3" else ""
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url="",
        secret_key="test-secret-key",
        storage_url=storage_url,
        s3_endpoint_url=os.environ.get("SAGE_S3_ENDPOINT_URL", "") if storage_url else "",
    )


@pytest.fixture
def engine(settings):
    engine = make_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine):
    """A session on the test database (commit freely: the database is emptied after the test)."""
    session = make_session_factory(engine)()
    yield session
    session.close()


@pytest.fixture
def app(settings):
    from app.main import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        yield client


# --- redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB_FIXTURE}"
    redis.Redis.from_url(url).flushdb()
    return url


# --- S3-compatible object storage (moto's standalone server) ---------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto) on 127.0.0.1 for the whole session; the standard AWS
    variables (and SAGE_S3_ENDPOINT_URL) point every process the tests start at it."""
    import subprocess
    import sys
    import time

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        SAGE_S3_ENDPOINT_URL=url,
    )
    try:
        deadline = time.monotonic() + 30
        while not service_reachable("127.0.0.1", port, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto server did not start on port {port} (exit {proc.poll()})", pytrace=False)
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "SAGE_S3_ENDPOINT_URL")


@pytest.fixture
def s3_storage_url(s3_endpoint) -> str:
    """`s3://<a new bucket>/objects` on the session's moto server."""
    import boto3

    bucket = f"sage-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/objects"
