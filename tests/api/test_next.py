"""GET /projects/{pid}/next: the caller's next image, by policy, never one they finished."""

from __future__ import annotations

import pytest

from app.tables import ModelVersion, Prediction
from tests.api.conftest import noise_png, put_annotation, upload


@pytest.fixture
def images(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    h = auth_headers(owner)
    ids = [
        i["id"]
        for i in upload(client, h, project.id, [(f"{i}.png", noise_png(seed=i)) for i in range(5)]).json()[
            "images"
        ]
    ]
    return project, h, ids


def nxt(client, h, pid, **params):
    r = client.get(f"/api/v1/projects/{pid}/next", headers=h, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    return (body["image"]["id"] if body["image"] else None), body


def test_sequential_skips_finished_and_wraps(client, images, make_user, auth_headers, db):
    from app.services.projects import set_member

    project, h, ids = images
    assert nxt(client, h, project.id)[0] == ids[0]
    put_annotation(client, h, ids[0], label="cat")
    put_annotation(client, h, ids[2], label="cat")
    assert nxt(client, h, project.id)[0] == ids[1]
    assert nxt(client, h, project.id, after=ids[1])[0] == ids[3]
    assert nxt(client, h, project.id, after=ids[4])[0] == ids[1]  # wraps around
    # another annotator is given only images that still need a reader (k = 1 by default) ...
    other = make_user()
    set_member(db, project, other.username, "annotator")
    assert nxt(client, auth_headers(other), project.id)[0] == ids[1]
    # ... and with two readers wanted per image, the images this reader read are open to them
    assert (
        client.patch(f"/api/v1/projects/{project.id}", headers=h, json={"readers_per_image": 2}).status_code
        == 200
    )
    assert nxt(client, auth_headers(other), project.id)[0] == ids[0]
    client.patch(f"/api/v1/projects/{project.id}", headers=h, json={"readers_per_image": 1})
    for iid in ids:
        if iid not in (ids[0], ids[2]):
            put_annotation(client, h, iid, label="dog")
    image, body = nxt(client, h, project.id)
    assert image is None and body["done"] is True


def test_random_never_returns_a_finished_image(client, images):
    project, h, ids = images
    for iid in ids[:4]:
        put_annotation(client, h, iid, label="cat")
    for _ in range(10):
        image, body = nxt(client, h, project.id, policy="random")
        assert image == ids[4] and body["policy"] == "random"


def test_uncertainty_and_misalignment_use_the_active_models_predictions(client, images, db):
    project, h, ids = images
    # without an active model: sequential
    image, body = nxt(client, h, project.id, policy="uncertainty")
    assert image == ids[0] and body["policy"] == "sequential"
    model = ModelVersion(
        project_id=project.id, version=1, artifact_key="x", checksum="0" * 64, backbone="tiny", active=True
    )
    db.add(model)
    db.flush()
    for iid, unc, align in zip(ids, [0.1, 0.9, 0.5, 0.95, 0.2], [0.9, 0.1, 0.5, None, 0.05], strict=True):
        db.add(
            Prediction(
                image_id=iid, model_id=model.id, label="cat", confidence=0.5, uncertainty=unc, alignment=align
            )
        )
    db.commit()
    image, body = nxt(client, h, project.id, policy="uncertainty")
    assert image == ids[3] and body["policy"] == "uncertainty"
    put_annotation(client, h, ids[3], label="cat")
    assert nxt(client, h, project.id, policy="uncertainty")[0] == ids[1]
    assert nxt(client, h, project.id, policy="misalignment")[0] == ids[4]
    assert nxt(client, h, project.id, policy="misalignment", after=ids[4])[0] == ids[1]
    # the project's default policy applies when none is asked for
    client.patch(f"/api/v1/projects/{project.id}", headers=h, json={"next_policy": "misalignment"})
    assert nxt(client, h, project.id)[1]["policy"] == "misalignment"


def test_viewers_do_not_get_work_and_bad_policy_is_422(client, images, make_user, auth_headers, db):
    from app.services.projects import set_member

    project, h, _ = images
    viewer = make_user()
    set_member(db, project, viewer.username, "viewer")
    assert client.get(f"/api/v1/projects/{project.id}/next", headers=auth_headers(viewer)).status_code == 403
    assert (
        client.get(f"/api/v1/projects/{project.id}/next", headers=h, params={"policy": "best"}).status_code
        == 422
    )


def test_empty_project(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    for policy in ("sequential", "random"):
        image, body = nxt(client, auth_headers(owner), project.id, policy=policy)
        assert image is None and body["done"]
