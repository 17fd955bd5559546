"""Projects, members and roles: who may see and change what."""

from __future__ import annotations

import pytest


def test_create_list_get_update_delete(client, make_user, auth_headers):
    user = make_user()
    h = auth_headers(user)
    r = client.post(
        "/api/v1/projects",
        headers=h,
        json={
            "name": "Chest X-ray",
            "labels": ["normal", "pneumonia"],
            "training": {"method": "sage", "epochs": 3},
        },
    )
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["labels"] == ["normal", "pneumonia"] and p["role"] == "manager"
    assert p["training"] == {"method": "sage", "epochs": 3}
    assert p["summary"]["images"] == 0 and p["summary"]["agreement"]["iou"] is None
    assert [x["id"] for x in client.get("/api/v1/projects", headers=h).json()] == [p["id"]]
    r = client.patch(
        f"/api/v1/projects/{p['id']}", headers=h, json={"labels": ["normal", "pneumonia", "other"]}
    )
    assert r.status_code == 200 and r.json()["labels"][-1] == "other"
    assert client.get(f"/api/v1/projects/{p['id']}", headers=h).json()["labels"] == [
        "normal",
        "pneumonia",
        "other",
    ]
    assert client.delete(f"/api/v1/projects/{p['id']}", headers=h).status_code == 204
    assert client.get(f"/api/v1/projects/{p['id']}", headers=h).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "labels": []},
        {"name": "x", "labels": ["a", "a"]},
        {"name": "", "labels": ["a"]},
        {"name": "x", "labels": ["a\x00b"]},
        {"name": "x", "labels": ["a"], "training": {"method": "magic"}},
        {"name": "x", "labels": ["a"], "training": {"epochs": 0}},
        {"name": "x", "labels": ["a"], "image_size": 100000},
        {"name": "x", "labels": ["a"], "unknown_field": 1},
    ],
)
def test_bad_project_bodies_are_422(client, make_user, auth_headers, body):
    r = client.post("/api/v1/projects", headers=auth_headers(make_user()), json=body)
    assert r.status_code == 422, r.text


def test_project_names_are_unique(client, make_user, auth_headers):
    h = auth_headers(make_user())
    assert (
        client.post("/api/v1/projects", headers=h, json={"name": "Same", "labels": ["a"]}).status_code == 201
    )
    r = client.post("/api/v1/projects", headers=h, json={"name": "same", "labels": ["a"]})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]


def test_non_members_get_404_and_members_see_their_role(client, make_user, make_project, auth_headers):
    owner, viewer, stranger, admin = make_user(), make_user(), make_user(), make_user(admin=True)
    project = make_project(owner, members={viewer: "viewer"})
    url = f"/api/v1/projects/{project.id}"
    assert client.get(url, headers=auth_headers(stranger)).status_code == 404
    assert client.get(url + "/images", headers=auth_headers(stranger)).status_code == 404
    assert client.get("/api/v1/projects", headers=auth_headers(stranger)).json() == []
    assert client.get(url, headers=auth_headers(viewer)).json()["role"] == "viewer"
    assert client.get(url, headers=auth_headers(admin)).json()["role"] == "manager"
    # a project that does not exist looks exactly like one you may not see
    assert client.get("/api/v1/projects/999999", headers=auth_headers(stranger)).json() == {
        "detail": "no project 999999"
    }
    assert client.get(url, headers=auth_headers(stranger)).json() == {"detail": f"no project {project.id}"}


@pytest.mark.parametrize("role", ["viewer", "annotator"])
def test_only_managers_change_settings_members_or_delete(client, make_user, make_project, auth_headers, role):
    owner, member, other = make_user(), make_user(), make_user()
    project = make_project(owner, members={member: role})
    h = auth_headers(member)
    url = f"/api/v1/projects/{project.id}"
    assert client.patch(url, headers=h, json={"description": "x"}).status_code == 403
    assert (
        client.post(
            url + "/members", headers=h, json={"username": other.username, "role": "viewer"}
        ).status_code
        == 403
    )
    assert client.delete(url + f"/members/{owner.username}", headers=h).status_code == 403
    assert client.delete(url, headers=h).status_code == 403
    assert client.get(url + "/members", headers=h).status_code == 200


def test_members_add_change_remove_and_last_manager(client, make_user, make_project, auth_headers):
    owner, alice = make_user(), make_user("alice")
    project = make_project(owner)
    h = auth_headers(owner)
    url = f"/api/v1/projects/{project.id}/members"
    r = client.post(url, headers=h, json={"username": "alice", "role": "annotator"})
    assert r.status_code == 201 and r.json()["role"] == "annotator"
    r = client.post(url, headers=h, json={"username": "ALICE", "role": "viewer"})
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    assert client.post(url, headers=h, json={"username": "ghost", "role": "viewer"}).status_code == 404
    assert client.post(url, headers=h, json={"username": "alice", "role": "owner"}).status_code == 422
    members = {m["username"]: m["role"] for m in client.get(url, headers=h).json()}
    assert members == {owner.username: "manager", "alice": "viewer"}
    # the last manager can be neither demoted nor removed
    assert client.post(url, headers=h, json={"username": owner.username, "role": "viewer"}).status_code == 409
    assert client.delete(f"{url}/{owner.username}", headers=h).status_code == 409
    assert client.delete(f"{url}/alice", headers=h).status_code == 204
    assert client.get(f"/api/v1/projects/{project.id}", headers=auth_headers(alice)).status_code == 404
    assert client.delete(f"{url}/alice", headers=h).status_code == 404


def test_a_label_in_use_cannot_be_removed(client, make_user, make_project, auth_headers):
    from tests.api.conftest import noise_png, upload

    owner = make_user()
    project = make_project(owner, labels=("cat", "dog"))
    h = auth_headers(owner)
    assert upload(client, h, project.id, [("a.png", noise_png())], label="cat").status_code == 201
    r = client.patch(f"/api/v1/projects/{project.id}", headers=h, json={"labels": ["dog"]})
    assert r.status_code == 409 and "cat" in r.json()["detail"]
    assert (
        client.patch(f"/api/v1/projects/{project.id}", headers=h, json={"labels": ["cat"]}).status_code == 200
    )


def test_summary_counts(client, make_user, make_project, auth_headers):
    from tests.api.conftest import mask_png, noise_png, put_annotation, upload

    owner, other = make_user(), make_user()
    project = make_project(owner, members={other: "annotator"})
    h, ho = auth_headers(owner), auth_headers(other)
    ids = [
        img["id"]
        for img in upload(client, h, project.id, [(f"{i}.png", noise_png(seed=i)) for i in range(3)]).json()[
            "images"
        ]
    ]
    put_annotation(client, h, ids[0], label="cat", saliency=mask_png(value=255))
    put_annotation(client, ho, ids[0], label="cat", saliency=mask_png(value=255))
    put_annotation(client, h, ids[1], label="dog")
    s = client.get(f"/api/v1/projects/{project.id}", headers=h).json()["summary"]
    assert s["images"] == 3 and s["labelled"] == 2 and s["annotated"] == 2 and s["annotations"] == 3
    assert s["labels"] == {"cat": 1, "dog": 1}
    assert s["agreement"] == {"iou": 1.0, "pearson": 1.0, "images": 1}  # identical maps (sage.agreement)


def test_training_method_by_name_and_an_unknown_one_is_422_naming_the_methods(
    client, make_user, auth_headers
):
    h = auth_headers(make_user())
    body = {"name": "x", "labels": ["a", "b"], "training": {"method": "magic"}}
    r = client.post("/api/v1/projects", headers=h, json=body)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"][-1] == "method"
    assert error["msg"] == (
        "Input should be 'ce', 'blur', 'cyborg', 'rrr', 'gradia', 'ce-swap', 'ce-jsd', 'sage-paper', 'sage' "
        "or 'sage-inverted'"
    )
    r = client.post("/api/v1/projects", headers=h, json={**body, "training": {"method": "ce-swap"}})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = client.patch(f"/api/v1/projects/{pid}", headers=h, json={"training": {"method": "sage-paper"}})
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/projects/{pid}", headers=h).json()["training"] == {"method": "sage-paper"}
