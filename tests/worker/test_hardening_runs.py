"""Run integrity: a cancel during publishing wins or is refused (409), and the periodic retrain
check isolates a project with bad stored options."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from app.queue import TASK_TRAIN
from app.services import model_versions as model_service
from app.services import runs
from app.tables import Project, TrainingRun
from tests.worker.conftest import LABELS, TINY_TRAINING, build_world, tiny_image
from tests.worker.test_runs import RecordingCelery, _register, _Stack


@pytest.fixture
def world(settings):
    for w in build_world(_Stack(settings), n=6):
        w.client.app.state.celery = RecordingCelery()
        yield w


def test_a_cancel_that_arrives_while_publishing_wins(world):
    with world.session() as s:
        run_id = runs.create_or_join_run(s, s.get(Project, world.project_id), None, {}).run.id
        assert runs.claim_run(s, run_id, "w")
    # training ended; the worker passed its last cancel check and is about to publish
    response = world.post(f"/api/v1/training-runs/{run_id}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    with world.session() as s:
        registered = model_service.register_model(
            s,
            run_id,
            "w",
            artifact_key="models/x/1",
            checksum="0" * 64,
            config=dict(TINY_TRAINING),
            metrics={"val_accuracy": 1.0, "val_loss": 0.1},
        )
        assert registered is None
        s.expire_all()
        run = s.get(TrainingRun, run_id)
        assert run.status == "cancelled" and run.model_id is None
        assert model_service.active_model(s, world.project_id) is None


def test_a_cancel_after_publishing_is_409_already_finished(world):
    with world.session() as s:
        run_id = runs.create_or_join_run(s, s.get(Project, world.project_id), None, {}).run.id
        model, activated = _register(s, world, run_id, "w", 0.9)
        assert activated
    response = world.post(f"/api/v1/training-runs/{run_id}/cancel")
    assert response.status_code == 409 and "already finished" in response.json()["detail"]
    with world.session() as s:
        assert model_service.active_model(s, world.project_id).id == model.id


def test_retrain_check_isolates_a_project_with_bad_stored_options(world, settings):
    from app.services import annotations, images, projects, users
    from app.storage import get_storage

    storage = get_storage(settings)
    with world.session() as s:
        # The world's project got options no run accepts (stored before validation existed).
        s.execute(update(Project).where(Project.id == world.project_id).values(training={"bogus": 1}))
        s.commit()
        owner = users.get_by_username(s, "manager")
        good = projects.create_project(
            s, owner, name="good", labels=LABELS, backbone="tiny", image_size=32, training=dict(TINY_TRAINING)
        )
        good.retrain_min_new = 2
        world_project = s.get(Project, world.project_id)
        world_project.retrain_min_new = 2
        s.commit()
        files = [
            images.UploadedFile(f"g{i}.png", tiny_image(LABELS[i % 2], seed=50 + i)[0]) for i in range(2)
        ]
        rows = images.upload_images(s, storage, good, owner, files, max_pixels=settings.max_image_pixels)
        for i, (image, _) in enumerate(rows):
            saliency = tiny_image(LABELS[i % 2], seed=50 + i)[1]
            annotations.put_annotation(
                s, storage, image, good, owner, label=LABELS[i % 2], saliency_png=saliency, if_match=None
            )
        celery = RecordingCelery()
        started = runs.retrain_check(s, celery)
        assert len(started) == 1 and celery.sent == [(TASK_TRAIN, started)]
        assert s.get(TrainingRun, started[0]).project_id == good.id
        good_id = good.id
    bad = world.get(f"/api/v1/projects/{world.project_id}").json()
    assert "bogus" in bad["retrain_error"]
    assert world.get(f"/api/v1/projects/{good_id}").json()["retrain_error"] is None
