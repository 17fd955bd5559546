"""Training-run state machine, reaper, retraining, activation and the API's validation, on SQLite
and PostgreSQL, without worker processes (the broker is a recorder: what would have been sent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.queue import TASK_PREDICT_PROJECT, TASK_TRAIN
from app.services import model_versions as model_service
from app.services import runs
from app.tables import Annotation, ModelVersion, Project, TrainingEvent, TrainingRun
from tests.worker.conftest import TINY_TRAINING, build_world


class RecordingCelery:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list]] = []

    def send_task(self, name, args=None, kwargs=None, **options):
        self.sent.append((name, list(args or [])))


class _Stack:
    name = "unit"

    def __init__(self, settings) -> None:
        self.settings = settings


@pytest.fixture
def world(settings):
    for w in build_world(_Stack(settings), n=6):
        w.client.app.state.celery = RecordingCelery()
        yield w


def _project(s, world) -> Project:
    return s.get(Project, world.project_id)


def test_options_are_validated_before_anything_is_queued(world):
    url = f"/api/v1/projects/{world.project_id}/training-runs"
    bad = world.post(url, json={"training": {"epochs": 0}})
    assert bad.status_code == 422 and "epochs" in bad.json()["detail"]
    unknown = world.post(url, json={"training": {"epoch": 3}})
    assert unknown.status_code == 422 and "epoch" in unknown.json()["detail"]
    assert world.client.app.state.celery.sent == []
    with world.session() as s:
        assert s.scalars(select(TrainingRun)).all() == []

    first = world.post(url, json={"training": {"epochs": 1}})
    assert first.status_code == 202 and first.json()["options"]["epochs"] == 1
    second = world.post(url, json={})
    assert second.status_code == 202 and second.json()["id"] == first.json()["id"] and second.json()["joined"]
    assert world.client.app.state.celery.sent == [(TASK_TRAIN, [first.json()["id"]])]


def test_viewer_cannot_train_and_strangers_see_nothing(world):
    from app.services import projects, users

    with world.session() as s:
        viewer = users.create_user(s, "viewer", "correct horse battery")
        users.create_user(s, "stranger", "correct horse battery")
        projects.set_member(s, _project(s, world), "viewer", "viewer")
        _, viewer_token = users.create_token(s, viewer, "t")
        stranger = s.scalars(select(users.User).where(users.User.username == "stranger")).one()
        _, stranger_token = users.create_token(s, stranger, "t")
    run = world.post(f"/api/v1/projects/{world.project_id}/training-runs", json={}).json()
    as_viewer = {"Authorization": f"Bearer {viewer_token}"}
    as_stranger = {"Authorization": f"Bearer {stranger_token}"}
    c = world.client
    assert c.post(f"/api/v1/projects/{world.project_id}/training-runs", headers=as_viewer).status_code == 403
    assert c.get(f"/api/v1/training-runs/{run['id']}", headers=as_viewer).status_code == 200
    assert c.post(f"/api/v1/training-runs/{run['id']}/cancel", headers=as_viewer).status_code == 403
    assert c.get(f"/api/v1/training-runs/{run['id']}", headers=as_stranger).status_code == 404
    assert c.get(f"/api/v1/projects/{world.project_id}/models", headers=as_stranger).status_code == 404
    assert (
        c.post(
            f"/api/v1/projects/{world.project_id}/predict", headers=as_stranger, files={"file": ("a", b"x")}
        ).status_code
        == 404
    )


def test_claim_is_exclusive_and_writes_need_ownership(world):
    with world.session() as s:
        run = runs.create_or_join_run(s, _project(s, world), None, {}).run
        assert runs.claim_run(s, run.id, "w1") is True
        assert runs.claim_run(s, run.id, "w2") is False  # a duplicate delivery does nothing
        assert runs.heartbeat(s, run.id, "w1") == (True, False)
        assert runs.heartbeat(s, run.id, "w2") == (False, False)
        assert runs.record_progress(s, run.id, "w2", {"epoch": 1}) is False
        assert runs.finish_run(s, run.id, "w2", "succeeded") is False
        runs.request_cancel(s, s.get(TrainingRun, run.id))
        assert runs.heartbeat(s, run.id, "w1") == (True, True)
        assert runs.finish_run(s, run.id, "w1", "cancelled") is True
        s.expire_all()
        assert s.get(TrainingRun, run.id).status == "cancelled"


def test_cancel_a_queued_run_at_once(world):
    with world.session() as s:
        run = runs.create_or_join_run(s, _project(s, world), None, {}).run
    response = world.post(f"/api/v1/training-runs/{run.id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    with world.session() as s:
        assert runs.claim_run(s, run.id, "late-worker") is False


def _age(s, run_id: int, seconds: float) -> None:
    run = s.get(TrainingRun, run_id)
    run.heartbeat_at = datetime.now(UTC) - timedelta(seconds=seconds)
    s.commit()


def test_reaper_requeues_then_fails_after_max_attempts(world, settings):
    celery = RecordingCelery()
    with world.session() as s:
        run_id = runs.create_or_join_run(s, _project(s, world), None, {}).run.id
        for attempt in range(1, settings.max_run_attempts + 1):
            assert runs.claim_run(s, run_id, f"w{attempt}")
            assert runs.reap_stale_runs(s, settings, celery).requeued == []  # fresh heartbeat
            _age(s, run_id, settings.heartbeat_stale_s + 1)
            report = runs.reap_stale_runs(s, settings, celery)
            s.expire_all()
            run = s.get(TrainingRun, run_id)
            if attempt < settings.max_run_attempts:
                assert report.requeued == [run_id] and run.status == "queued" and run.worker_id is None
                assert celery.sent[-1] == (TASK_TRAIN, [run_id])
            else:
                assert report.failed == [run_id] and run.status == "failed"
                assert "stopped responding" in run.error and f"{attempt} attempt" in run.error
        # The dead owner can no longer write anything.
        assert runs.finish_run(s, run_id, f"w{settings.max_run_attempts}", "succeeded") is False


def test_reaper_resends_queued_runs_nobody_claimed(world, settings):
    celery = RecordingCelery()
    with world.session() as s:
        run = runs.create_or_join_run(s, _project(s, world), None, {}).run
        assert runs.reap_stale_runs(s, settings, celery).resent == []
        run.progress = {
            "phase": "queued",
            "enqueued_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        }
        s.commit()
        assert runs.reap_stale_runs(s, settings, celery).resent == [run.id]
        assert runs.reap_stale_runs(s, settings, celery).resent == []  # once per stale period
        assert celery.sent == [(TASK_TRAIN, [run.id])]

        def sent_ago(periods: float) -> None:
            s.expire_all()
            progress = dict(s.get(TrainingRun, run.id).progress)
            ago = timedelta(seconds=settings.heartbeat_stale_s * periods)
            progress["enqueued_at"] = (datetime.now(UTC) - ago).isoformat()
            s.get(TrainingRun, run.id).progress = progress
            s.commit()

        # Still waiting after one re-send: the next one comes after two stale periods, then four.
        sent_ago(1.5)
        assert runs.reap_stale_runs(s, settings, celery).resent == []
        sent_ago(2.5)
        assert runs.reap_stale_runs(s, settings, celery).resent == [run.id]
        sent_ago(3.5)
        assert runs.reap_stale_runs(s, settings, celery).resent == []
        sent_ago(4.5)
        assert runs.reap_stale_runs(s, settings, celery).resent == [run.id]
        assert len(celery.sent) == 3


def test_retraining_is_due_after_k_changed_annotations(world):
    celery = RecordingCelery()
    with world.session() as s:
        project = _project(s, world)
        project.retrain_min_new = 7
        s.commit()
        assert runs.retrain_check(s, celery) == []  # 6 annotations < 7
        project.retrain_min_new = 6
        s.commit()
        started = runs.retrain_check(s, celery)
        assert len(started) == 1 and celery.sent == [(TASK_TRAIN, started)]
        assert s.get(TrainingRun, started[0]).reason == "scheduled"
        assert runs.retrain_check(s, celery) == []  # one queued already
        # The run finishes having snapshotted the data now: nothing changed since, nothing due.
        run = s.get(TrainingRun, started[0])
        assert runs.claim_run(s, run.id, "w")
        runs.record_lineage(s, run.id, "w", {"snapshot_at": datetime.now(UTC).isoformat()})
        assert runs.finish_run(s, run.id, "w", "failed", error="x")
        assert runs.retrain_check(s, celery) == []
        # Annotations edited after the snapshot count again.
        for a in s.scalars(select(Annotation)).all():
            a.updated_at = datetime.now(UTC) + timedelta(seconds=5)
        s.commit()
        assert len(runs.retrain_check(s, celery)) == 1


def _register(s, world, run_id: int, worker: str, acc: float, loss: float = 1.0):
    assert runs.claim_run(s, run_id, worker)
    return model_service.register_model(
        s,
        run_id,
        worker,
        artifact_key=f"models/x/{run_id}",
        checksum="0" * 64,
        config=dict(TINY_TRAINING),
        metrics={"val_accuracy": acc, "val_loss": loss},
    )


def test_activation_policy_and_rollback(world):
    with world.session() as s:
        project = _project(s, world)
        first = runs.create_or_join_run(s, project, None, {}).run.id
        m1, activated = _register(s, world, first, "w", 0.8)
        assert activated and m1.version == 1
        second = runs.create_or_join_run(s, project, None, {}).run.id
        m2, activated = _register(s, world, second, "w", 0.7)  # worse: stays inactive
        assert not activated and m2.version == 2
        third = runs.create_or_join_run(s, project, None, {}).run.id
        m3, activated = _register(s, world, third, "w", 0.8, loss=0.5)  # tie, lower loss: better
        assert activated
        project.activation_policy = "manual"
        s.commit()
        fourth = runs.create_or_join_run(s, project, None, {}).run.id
        m4, activated = _register(s, world, fourth, "w", 1.0)
        assert not activated
        assert model_service.active_model(s, project.id).id == m3.id
        assert (
            s.get(TrainingRun, fourth).model_id == m4.id and s.get(TrainingRun, fourth).status == "succeeded"
        )
        m1_id, m3_id = m1.id, m3.id

    rolled = world.post(f"/api/v1/models/{m1_id}/activate")
    assert rolled.status_code == 200 and rolled.json()["active"] is True
    models = world.get(f"/api/v1/projects/{world.project_id}/models").json()
    assert [m["version"] for m in models] == [4, 3, 2, 1]
    assert [m["active"] for m in models] == [False, False, False, True]
    assert (TASK_PREDICT_PROJECT, [m1_id]) in world.client.app.state.celery.sent
    with world.session() as s:
        assert s.scalar(select(ModelVersion.active).where(ModelVersion.id == m3_id)) is False
        assert s.scalar(select(TrainingEvent.id).where(TrainingEvent.kind == "log")) is not None


def test_predict_without_an_active_model_is_409(world):
    response = world.post(f"/api/v1/projects/{world.project_id}/predict", files={"file": ("a.png", b"x")})
    assert response.status_code == 409 and "no active model" in response.json()["detail"]
    assert world.get(f"/api/v1/images/{world.image_ids[0]}/prediction").status_code == 409


def test_weights_are_chosen_by_registered_name_never_by_server_path(world, tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_WEIGHTS_DIR", str(tmp_path / "weights"))
    url = f"/api/v1/projects/{world.project_id}/training-runs"
    unknown = world.post(url, json={"training": {"weights": "ResNet18_Weights.IMAGENET1K_V1"}})
    assert unknown.status_code == 422 and "unknown weights" in unknown.json()["detail"]
    path = world.post(url, json={"training": {"pretrained_path": "/etc/passwd"}})
    assert path.status_code == 422 and "sage-studio weights add" in path.json()["detail"]
    assert world.client.app.state.celery.sent == []
    created = world.post(
        "/api/v1/projects", json={"name": "w", "labels": ["a", "b"], "training": {"weights": "nope"}}
    )
    assert created.status_code == 422 and "unknown weights" in str(created.json()["detail"])
    created = world.post(
        "/api/v1/projects", json={"name": "w", "labels": ["a", "b"], "training": {"pretrained_path": "/x"}}
    )
    assert created.status_code == 422

    from sage.weights import add_weights

    (tmp_path / "w.pth").write_bytes(b"not really weights")
    add_weights(tmp_path / "w.pth", name="mine", backbone="tiny")
    listed = world.client.get("/api/v1/weights", headers=world.headers).json()
    assert [(w["name"], w["backbone"], w["present"]) for w in listed] == [("mine", "tiny", True)]
    wrong_backbone = world.post(
        url, json={"training": {"weights": "mine", "backbone": "resnet18", "image_size": 224}}
    )
    assert wrong_backbone.status_code == 422 and "not 'resnet18'" in wrong_backbone.json()["detail"]
    ok = world.post(url, json={"training": {"weights": "mine", "backbone": "tiny"}})
    assert ok.status_code == 202 and ok.json()["options"]["weights"] == "mine"


def test_project_page_offers_the_registered_weights(world, tmp_path, monkeypatch):
    from sage.weights import add_weights

    monkeypatch.setenv("SAGE_WEIGHTS_DIR", str(tmp_path / "weights"))
    (tmp_path / "w.pth").write_bytes(b"weights")
    add_weights(tmp_path / "w.pth", name="mine", backbone="tiny")
    page = world.client.get(f"/projects/{world.project_id}", headers=world.headers)
    assert page.status_code == 200
    assert 'id="train-weights"' in page.text
    assert '<option value="mine" data-backbone="tiny" data-image-size="64">' in page.text


def test_retraining_keeps_the_splits_and_compares_models_on_the_same_val_images(world):
    from app.tables import Image
    from worker.context import WorkerContext
    from worker.train_job import train_run

    ctx = WorkerContext(world.stack.settings)
    celery = world.client.app.state.celery
    url = f"/api/v1/projects/{world.project_id}/training-runs"

    def splits():
        with world.session() as s:
            return {
                i.id: i.split for i in s.scalars(select(Image).where(Image.project_id == world.project_id))
            }

    first = world.post(url, json={}).json()
    assert train_run(ctx, first["id"], celery)["status"] == "succeeded"
    drawn = splits()
    assert {"train", "val"} <= set(drawn.values()) and None not in drawn.values()  # 6 images: no test yet
    body = world.get(f"/api/v1/training-runs/{first['id']}").json()
    metrics = body["metrics"]
    for key in ("val_auroc", "val_balanced_accuracy", "val_sens_at_95_spec", "val_ece_calibrated",
                "temperature"):  # fmt: skip
        assert key in metrics, key
    assert metrics["num_val"] == sum(s == "val" for s in drawn.values())
    assert metrics["num_test"] == sum(s == "test" for s in drawn.values())

    second = world.post(url, json={"training": {"seed": 1}}).json()
    result = train_run(ctx, second["id"], celery)
    assert result["status"] == "succeeded"
    assert splits() == drawn  # the same test and validation images, not a redraw
    compared = world.get(f"/api/v1/training-runs/{second['id']}").json()["metrics"]["compared_with"]
    assert compared["model_id"] == body["model_id"] and compared["n"] == metrics["num_val"]
