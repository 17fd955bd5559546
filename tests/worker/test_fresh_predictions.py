"""Fresh predictions: new uploads and imports predicted by the active model without activation,
alignment recomputed when annotations change, re-predict all, and the sweep that finishes an
interrupted prediction job (SQLite and PostgreSQL; worker bodies run in-process)."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import delete, select, update

from app.queue import TASK_PREDICT_MISSING, TASK_PREDICT_PROJECT, TASK_REALIGN
from app.tables import ModelVersion, Prediction
from tests.worker.conftest import png, tiny_image
from tests.worker.test_jobs import _sent, train_model, world  # noqa: F401 - the fixture
from worker import prediction
from worker.context import WorkerContext


def test_new_uploads_and_imports_are_predicted_without_activation(world):  # noqa: F811
    model_id = train_model(world)
    ctx = WorkerContext(world.stack.settings)
    prediction.predict_project(ctx, model_id)  # what activation started
    image_png, _ = tiny_image("right", 77)
    uploaded = world.post(
        f"/api/v1/projects/{world.project_id}/images", files={"files": ("new.png", image_png)}
    )
    assert uploaded.status_code == 201, uploaded.text
    new_id = uploaded.json()["images"][0]["id"]
    assert world.get(f"/api/v1/images/{new_id}/prediction").status_code == 404  # not yet
    assert _sent(world, TASK_PREDICT_MISSING) == [[world.project_id]]  # sent after the commit

    assert prediction.predict_missing(ctx, world.project_id)["predicted"] == 1
    stored = world.get(f"/api/v1/images/{new_id}/prediction")
    assert stored.status_code == 200 and stored.json()["model_id"] == model_id
    with world.session() as s:
        assert s.get(ModelVersion, model_id).active  # still the same version: no activation happened
    assert prediction.predict_missing(ctx, world.project_id)["predicted"] == 0  # idempotent

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.csv", "image,label\nimp.png,left\n")
        zf.writestr("images/imp.png", tiny_image("left", 78)[0])
    imported = world.post(
        f"/api/v1/projects/{world.project_id}/import", files={"file": ("d.zip", buf.getvalue())}
    )
    assert imported.status_code == 201, imported.text
    assert len(_sent(world, TASK_PREDICT_MISSING)) == 2
    assert prediction.predict_missing(ctx, world.project_id)["predicted"] == 1
    gallery = world.get(f"/api/v1/projects/{world.project_id}/predictions?limit=200").json()
    assert len(gallery) == 10  # 8 annotated + the upload + the import


def test_an_interrupted_prediction_job_is_finished_by_the_sweep(world):  # noqa: F811
    model_id = train_model(world)
    ctx = WorkerContext(world.stack.settings)
    prediction.predict_project(ctx, model_id)
    with world.session() as s:  # the job died half-way: half the images have no prediction
        half = world.image_ids[: len(world.image_ids) // 2]
        s.execute(delete(Prediction).where(Prediction.image_id.in_(half)))
        s.commit()
    assert prediction.predict_missing(ctx)["predicted"] == 0  # just activated: left to its own job
    with world.session() as s:
        s.execute(
            update(ModelVersion)
            .where(ModelVersion.id == model_id)
            .values(activated_at=datetime.now(UTC) - timedelta(hours=1))
        )
        s.commit()
    assert prediction.predict_missing(ctx)["predicted"] == len(half)  # beat's sweep, every project
    with world.session() as s:
        assert len(list(s.scalars(select(Prediction.id).where(Prediction.model_id == model_id)))) == 8


def test_alignment_follows_the_consensus_map(world):  # noqa: F811
    model_id = train_model(world)
    ctx = WorkerContext(world.stack.settings)
    prediction.predict_project(ctx, model_id)
    image_id = world.image_ids[0]
    before = world.get(f"/api/v1/images/{image_id}/prediction").json()["alignment"]
    mine = world.get(f"/api/v1/images/{image_id}/annotation")
    corner = np.zeros((32, 32), dtype=np.uint8)
    corner[:4, :4] = 255  # a map somewhere else entirely
    put = world.client.put(
        f"/api/v1/images/{image_id}/annotation",
        headers={**world.headers, "If-Match": mine.headers["ETag"].strip('"')},
        data={"label": "left"},
        files={"saliency": ("s.png", png(corner, "L"))},
    )
    assert put.status_code == 200, put.text
    assert _sent(world, TASK_REALIGN) == [[image_id]]
    assert prediction.realign_image(ctx, image_id)["realigned"] == 1
    after = world.get(f"/api/v1/images/{image_id}/prediction").json()["alignment"]
    assert after is not None and before is not None and after < before
    # the sweep finds nothing stale now; an annotation changed behind its back is found
    assert prediction.realign_model(ctx, model_id) == 0
    from app.tables import Annotation

    with world.session() as s:
        s.execute(
            update(Annotation)
            .where(Annotation.image_id == world.image_ids[1])
            .values(updated_at=datetime.now(UTC) + timedelta(minutes=1))
        )
        s.commit()
    assert prediction.realign_model(ctx, model_id) == 1

    # an adjudicated map replaces the readers' mean: the alignment follows it
    image_id = world.image_ids[2]
    before = world.get(f"/api/v1/images/{image_id}/prediction").json()["alignment"]
    adjudicated = world.client.put(
        f"/api/v1/images/{image_id}/adjudication",
        headers=world.headers,
        data={"label": "left"},
        files={"saliency": ("s.png", png(corner, "L"))},
    )
    assert adjudicated.status_code == 201, adjudicated.text
    assert [image_id] in _sent(world, TASK_REALIGN)
    assert prediction.realign_image(ctx, image_id)["realigned"] == 1
    assert world.get(f"/api/v1/images/{image_id}/prediction").json()["alignment"] < before


def test_repredict_all_is_for_managers(world):  # noqa: F811
    url = f"/api/v1/projects/{world.project_id}/predictions/refresh"
    assert world.post(url).status_code == 409
    model_id = train_model(world)
    answer = world.post(url)
    assert answer.status_code == 202 and answer.json()["model_id"] == model_id
    assert [model_id] in _sent(world, TASK_PREDICT_PROJECT)
