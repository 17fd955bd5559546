"""Migration 0006: SQLite ids are never reused, and a populated database migrates down and up again
with every row kept (batch rebuilds run with foreign keys off)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from app.db import alembic_config, make_engine, make_session_factory, upgrade_to_head
from app.tables import (
    Annotation,
    AnnotationRevision,
    ApiToken,
    Image,
    LoginFailure,
    ModelVersion,
    Prediction,
    Project,
    ProjectMember,
    TrainingEvent,
    TrainingRun,
    User,
)


def _populate(url: str) -> None:
    engine = make_engine(url)
    with make_session_factory(engine)() as s:
        user = User(username="ann", password_hash="x")
        s.add(user)
        s.flush()
        s.add(ApiToken(user_id=user.id, name="t", prefix="sst_", token_hash="a" * 64))
        s.add(LoginFailure(key="k" * 64))
        project = Project(name="p", labels=["a", "b"], created_by_id=user.id)
        s.add(project)
        s.flush()
        s.add(ProjectMember(project_id=project.id, user_id=user.id, role="manager"))
        image = Image(
            project_id=project.id, sha256="0" * 64, storage_key="k", format="png", width=1, height=1
        )
        s.add(image)
        s.flush()
        annotation = Annotation(project_id=project.id, image_id=image.id, author_id=user.id, label="a")
        s.add(annotation)
        s.flush()
        s.add(AnnotationRevision(annotation_id=annotation.id, revision=1, label="a", author_id=user.id))
        run = TrainingRun(project_id=project.id, status="succeeded")
        s.add(run)
        s.flush()
        s.add(TrainingEvent(run_id=run.id, kind="status", data={"status": "succeeded"}))
        model = ModelVersion(
            project_id=project.id, run_id=run.id, version=1, artifact_key="m", checksum="c", backbone="tiny"
        )
        s.add(model)
        s.flush()
        s.add(Prediction(image_id=image.id, model_id=model.id, label="a", confidence=1.0, uncertainty=0.0))
        s.commit()
    engine.dispose()


TABLES = (
    "users",
    "api_tokens",
    "login_failures",
    "projects",
    "project_members",
    "images",
    "annotations",
    "annotation_revisions",
    "training_runs",
    "training_events",
    "model_versions",
    "predictions",
)


def _rows(url: str) -> dict[str, list]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = {t: sorted(tuple(r)[:3] for r in conn.execute(text(f"SELECT * FROM {t}"))) for t in TABLES}
    engine.dispose()
    return rows


def test_populated_sqlite_database_migrates_down_and_up_keeping_every_row(tmp_path):
    url = f"sqlite:///{tmp_path / 'sage.db'}"
    upgrade_to_head(url)
    _populate(url)
    before = _rows(url)
    assert all(before[t] for t in TABLES)
    command.downgrade(alembic_config(url), "0008")
    assert _rows(url) == before
    command.upgrade(alembic_config(url), "head")
    assert _rows(url) == before


def test_sqlite_ids_are_never_reused(tmp_path):
    url = f"sqlite:///{tmp_path / 'sage.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as s:
        projects = [Project(name=f"p{i}", labels=["a", "b"]) for i in range(3)]
        s.add_all(projects)
        s.commit()
        last = projects[-1].id
        s.delete(projects[-1])
        s.commit()
        again = Project(name="new", labels=["a", "b"])
        s.add(again)
        s.commit()
        assert again.id == last + 1
    with engine.connect() as conn:
        for name, sql in conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type='table'")):
            # every table with a surrogate integer id (weights_files is keyed by its name)
            if name not in ("alembic_version", "sqlite_sequence") and "id INTEGER" in sql:
                assert "AUTOINCREMENT" in sql, name
    engine.dispose()
