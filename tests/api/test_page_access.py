"""Browser pages without a browser: who may open which page (login redirect, 404 for non-members,
403 below the needed role), the error page they get instead, and the projects page's query count."""

from __future__ import annotations

import html
from urllib.parse import quote

import pytest
from fastapi import Response
from sqlalchemy import event

from app import security
from app.services.projects import set_member
from app.tables import ModelVersion
from tests.api.conftest import noise_png, put_annotation, upload


def _sign_in(client, settings, user) -> None:
    """The browser session cookie of `user` on `client` (as after POST /login)."""
    response = Response()
    security.login_session(response, user, settings)
    cookie = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    client.cookies.clear()
    client.cookies.set(settings.session_cookie, cookie)


def _error_page(response, user, status: int, title: str, message: str) -> None:
    """The error page: the status, its title and message, and the signed-in user in the header."""
    assert response.status_code == status, (str(response.request.url), response.status_code)
    assert response.headers["content-type"].startswith("text/html")
    text = html.unescape(response.text)
    assert f"HTTP {status}" in text
    assert f"<h1>{title}</h1>" in text
    assert f"<p>{message}</p>" in text
    assert f'<strong style="color:var(--text)">{user.username}</strong>' in text


def _not_found(response, user, what: str) -> None:
    _error_page(response, user, 404, "Not found", f"There is no such {what}, or you are not a member of it.")


def _upload_one(client, headers, pid: int, seed: int) -> int:
    r = upload(client, headers, pid, [(f"{seed}.png", noise_png(seed=seed))])
    assert r.status_code == 201, r.text
    return r.json()["images"][0]["id"]


@pytest.fixture
def world(client, make_user, make_project, auth_headers, db):
    """A manager's project with two images, its viewer, annotator and adjudicator (an annotator with
    the flag); the manager's second project with one image; a user who is a member of neither."""
    manager, viewer, annotator, judge, outsider = (make_user() for _ in range(5))
    project = make_project(manager, members={viewer: "viewer", annotator: "annotator"})
    set_member(db, project, judge.username, "annotator", adjudicator=True)
    other = make_project(manager)
    h = auth_headers(manager)
    ids = [_upload_one(client, h, project.id, 1), _upload_one(client, h, project.id, 2)]
    other_iid = _upload_one(client, h, other.id, 3)
    return {
        "pid": project.id,
        "ids": ids,
        "other_pid": other.id,
        "other_iid": other_iid,
        "manager": manager,
        "viewer": viewer,
        "annotator": annotator,
        "judge": judge,
        "outsider": outsider,
    }


def _project_urls(pid: int, iid: int) -> list[str]:
    return [
        f"/projects/{pid}",
        f"/projects/{pid}/annotate",
        f"/projects/{pid}/annotate/{iid}",
        f"/projects/{pid}/review/{iid}",
        f"/projects/{pid}/adjudicate",
        f"/projects/{pid}/adjudicate/{iid}",
        f"/projects/{pid}/settings",
        f"/projects/{pid}/images",
        f"/projects/{pid}/models",
        f"/projects/{pid}/predictions",
    ]


def test_anonymous_requests_are_sent_to_login_with_the_page_to_come_back_to(client, world):
    pid, iid = world["pid"], world["ids"][0]
    for url in ["/", "/admin", "/tokens", *_project_urls(pid, iid), f"/projects/{pid}/annotate?after={iid}"]:
        r = client.get(url, follow_redirects=False)
        assert r.status_code == 303, url
        assert r.headers["location"] == f"/login?next={quote(url, safe='')}", url
    # a project that does not exist: the same redirect (nothing is revealed before signing in)
    r = client.get("/projects/999999/models", follow_redirects=False)
    assert r.headers["location"] == "/login?next=%2Fprojects%2F999999%2Fmodels"


def test_non_members_get_404_on_every_project_page(client, settings, world):
    outsider = world["outsider"]
    _sign_in(client, settings, outsider)
    for url in _project_urls(world["pid"], world["ids"][0]):
        _not_found(client.get(url, follow_redirects=False), outsider, "project")
    _not_found(client.get("/projects/999999"), outsider, "project")
    # the REST API keeps its JSON errors
    r = client.get(f"/api/v1/projects/{world['pid']}")
    assert r.status_code == 404 and r.json() == {"detail": f"no project {world['pid']}"}


def test_viewers_may_look_but_not_paint(client, settings, world):
    pid, iid, viewer = world["pid"], world["ids"][0], world["viewer"]
    _sign_in(client, settings, viewer)
    for url in (f"/projects/{pid}/annotate", f"/projects/{pid}/annotate/{iid}"):
        _error_page(
            client.get(url, follow_redirects=False),
            viewer,
            403,
            "Annotators only",
            "Your role in this project is viewer: you can look, not paint.",
        )
    for url in (f"/projects/{pid}", f"/projects/{pid}/review/{iid}", f"/projects/{pid}/models"):
        assert client.get(url).status_code == 200, url


def test_only_adjudicators_and_managers_settle_disagreements(client, settings, world):
    pid, iid = world["pid"], world["ids"][0]
    for user in (world["viewer"], world["annotator"]):
        _sign_in(client, settings, user)
        for url in (f"/projects/{pid}/adjudicate", f"/projects/{pid}/adjudicate/{iid}"):
            _error_page(
                client.get(url),
                user,
                403,
                "Adjudicators only",
                "Only the project's managers and members with the adjudicator flag settle disagreements.",
            )
    for user in (world["judge"], world["manager"]):
        _sign_in(client, settings, user)
        for url in (f"/projects/{pid}/adjudicate", f"/projects/{pid}/adjudicate/{iid}"):
            assert client.get(url).status_code == 200, (user.username, url)


def test_only_managers_open_the_settings(client, settings, world):
    pid = world["pid"]
    for user in (world["viewer"], world["annotator"], world["judge"]):
        _sign_in(client, settings, user)
        _error_page(
            client.get(f"/projects/{pid}/settings"),
            user,
            403,
            "Managers only",
            "Only the project's managers change its settings.",
        )
    _sign_in(client, settings, world["manager"])
    assert client.get(f"/projects/{pid}/settings").status_code == 200


def test_an_image_of_another_project_is_not_found(client, settings, world):
    pid, other_iid, manager = world["pid"], world["other_iid"], world["manager"]
    _sign_in(client, settings, manager)  # a member of both projects
    for url in (
        f"/projects/{pid}/annotate/{other_iid}",
        f"/projects/{pid}/review/{other_iid}",
        f"/projects/{pid}/adjudicate/{other_iid}",
        f"/projects/{pid}/annotate/999999",
    ):
        _not_found(client.get(url), manager, "image")
    assert client.get(f"/projects/{world['other_pid']}/review/{other_iid}").status_code == 200


def test_the_admin_page_is_not_found_for_non_admins(client, settings, world, make_user):
    manager = world["manager"]
    _sign_in(client, settings, manager)
    _not_found(client.get("/admin"), manager, "page")
    assert client.get("/tokens").status_code == 200
    _sign_in(client, settings, make_user(admin=True))
    page = client.get("/admin")
    assert page.status_code == 200
    # every project, by name, in the page's boot data
    assert '"name": "project' in page.text


# --- the projects page's queries ------------------------------------------------------------------


def _statements(engine):
    """A list that collects every SQL statement `engine` executes while the listener is attached."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return seen, lambda: event.remove(engine, "before_cursor_execute", record)


def _card(page: str, pid: int) -> str:
    """The projects page's card of project `pid`."""
    start = page.index(f'data-project-id="{pid}"')
    return page[start : page.index("</article>", start)]


def _projects_page(client, app, settings, make_user, make_project, auth_headers, db, n: int, admin: bool):
    """GET / for a reader who is a member of `n` projects (each with its images, the reader's readings
    and every other one with an active model): the page and the statements it ran."""
    owner = make_user()
    reader = make_user(admin=admin)
    h_owner, h_reader = auth_headers(owner), auth_headers(reader)
    expected = {}
    for k in range(n):
        role = ("viewer", "annotator", "manager")[k % 3]
        project = make_project(owner, members={} if admin else {reader: role})
        ids = [_upload_one(client, h_owner, project.id, 100 * n + 10 * k + i) for i in range(k % 3 + 1)]
        mine = 0
        if admin or role != "viewer":
            for iid in ids[: k % 2 + 1]:
                assert put_annotation(client, h_reader, iid, label="cat").status_code == 201
                mine += 1
        if k % 2 == 0:
            db.add(
                ModelVersion(
                    project_id=project.id, version=k + 1, artifact_key="x", checksum="0" * 64,
                    backbone="tiny", active=True, metrics={"accuracy": 0.875},
                )
            )  # fmt: skip
            db.commit()
        expected[project.id] = {
            "name": project.name,
            "role": "manager" if admin else role,
            "images": len(ids),
            "mine": mine,
            "model": f"Model v{k + 1} · accuracy 87.5%" if k % 2 == 0 else "No model yet",
        }
    _sign_in(client, settings, reader)
    seen, stop = _statements(app.state.engine)
    try:
        page = client.get("/")
    finally:
        stop()
    assert page.status_code == 200
    return page.text, len(seen), expected


@pytest.mark.parametrize("admin", [False, True], ids=["member", "admin"])
def test_the_projects_page_runs_as_many_statements_for_12_projects_as_for_2(
    client, app, settings, make_user, make_project, auth_headers, db, admin
):
    counts = []
    for n in (2, 12):
        text, statements, expected = _projects_page(
            client, app, settings, make_user, make_project, auth_headers, db, n, admin
        )
        for pid, want in expected.items():
            card = html.unescape(_card(text, pid))
            assert f">{want['name']}</a>" in card
            assert f'<span class="badge {want["role"]}">{want["role"]}</span>' in card
            assert f"<strong>{want['images']}</strong> images" in card
            assert f"<strong>{want['mine']}</strong> annotated" in card  # only this reader reads them
            assert f"<strong>{want['mine']}</strong> by you" in card
            assert want["model"] in card
        if not admin:
            assert text.count('class="card project-card"') == n  # only the reader's projects
        counts.append(statements)
    assert counts[0] == counts[1], counts
