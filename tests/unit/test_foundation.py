"""The foundation: settings, health and readiness, migrations in step with the models, deployment files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.db import make_engine
from app.main import create_app
from app.settings import DEV_SECRET, Settings
from app.tables import Base

ROOT = Path(__file__).resolve().parents[2]


def test_default_secret_is_refused_in_production():
    with pytest.raises(ValidationError, match="SAGE_SECRET_KEY"):
        Settings(env="production", secret_key=DEV_SECRET)
    assert Settings(env="production", secret_key="x" * 40).secret_key == "x" * 40


def test_settings_read_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAGE_BROKER_URL", "redis://127.0.0.1:6379/3")
    s = Settings()
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'sage.db'}"
    assert not s.is_embedded_broker
    assert s.resolved_result_backend == "redis://127.0.0.1:6379/3"


def test_healthz_and_readyz_answer_on_a_migrated_database(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text


def test_readyz_reports_an_unmigrated_database(tmp_path):
    settings = Settings(env="test", data_dir=tmp_path, secret_key="k")
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert "sage-studio migrate" in " ".join(r.json()["detail"])


def test_readyz_reports_an_unreachable_broker(settings):
    bad = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "result_backend": "rpc://"})
    with TestClient(create_app(bad)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert any("broker unreachable" in d for d in r.json()["detail"])


def test_readyz_with_redis_broker(settings, redis_url):
    s = settings.model_copy(update={"broker_url": redis_url})
    with TestClient(create_app(s)) as client:
        assert client.get("/readyz").status_code == 200


def test_migrations_match_the_models(database_url):
    """Autogenerate against a database at head finds nothing: every model change has a migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_single_migration_head():
    from alembic.script import ScriptDirectory

    from app.db import alembic_config

    assert len(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()) == 1


def test_compose_file_names_every_service_the_readme_mentions():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = set(compose["services"])
    assert {"postgres", "redis", "app", "beat", "worker-predict", "worker-train"} <= services
    readme = (ROOT / "README.md").read_text()
    for name in services:
        assert f"`{name}`" in readme, f"README does not mention compose service {name}"
    train = compose["services"]["worker-train"]
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name in ("app", "beat", "worker-predict", "worker-train"):
        env = compose["services"][name]["environment"]
        assert env["SAGE_DATABASE_URL"].startswith("postgresql")
        assert env["SAGE_BROKER_URL"].startswith("redis://")


def test_dockerfile_is_multistage_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2
    assert "ARG BASE_IMAGE" in text or "ARG VARIANT" in text
    assert "\nUSER " in text


def test_metrics_count_requests_by_route_template(client):
    client.get("/healthz")
    client.get("/healthz")
    body = client.get("/metrics").text
    assert 'sage_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in body
    assert "sage_http_request_duration_seconds_bucket" in body
    assert "# TYPE sage_training_runs gauge" in body


def test_layering_contracts_hold():
    """DESIGN.md section 1, checked statically (every import, also one inside a function) by the
    import-linter contracts in pyproject.toml: sage < app < worker, app never imports worker, the
    web process never imports torch, sage imports no web, database or queue module."""
    import subprocess
    import sys

    lint_imports = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint_imports)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_pre_commit_runs_what_make_lint_runs():
    """The pre-commit hooks and `make lint` stay one list of checks."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlint: setup\n", 1)[1].split("\n\n", 1)[0]
    lint = [line.strip().replace("$(BIN)/", ".venv/bin/").removesuffix(" .") for line in recipe.splitlines()]
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert lint == [h["entry"] for h in hooks]
    assert all(h["language"] == "system" for h in hooks)
