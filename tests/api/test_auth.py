"""Accounts, tokens, sessions and CSRF: who may call the API, and how."""

from __future__ import annotations

import pytest
from fastapi import Response

from app import security
from tests.api.conftest import PASSWORD

# One route of each kind; every one must answer 401 without credentials.
PROTECTED = [
    ("GET", "/api/v1/projects"),
    ("POST", "/api/v1/projects"),
    ("GET", "/api/v1/projects/1"),
    ("PATCH", "/api/v1/projects/1"),
    ("DELETE", "/api/v1/projects/1"),
    ("GET", "/api/v1/projects/1/members"),
    ("POST", "/api/v1/projects/1/members"),
    ("GET", "/api/v1/projects/1/images"),
    ("POST", "/api/v1/projects/1/images"),
    ("GET", "/api/v1/projects/1/next"),
    ("POST", "/api/v1/projects/1/import"),
    ("GET", "/api/v1/projects/1/export"),
    ("GET", "/api/v1/images/1"),
    ("GET", "/api/v1/images/1/file"),
    ("DELETE", "/api/v1/images/1"),
    ("PUT", "/api/v1/images/1/annotation"),
    ("GET", "/api/v1/images/1/annotations"),
    ("GET", "/api/v1/images/1/saliency.png"),
    ("GET", "/api/v1/annotations/1/revisions"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/users"),
    ("GET", "/api/v1/users/me"),
]


def test_every_route_needs_credentials(client):
    for method, path in PROTECTED:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert "detail" in r.json()
        assert r.headers.get("www-authenticate") == "Bearer"


def test_password_login_gives_a_working_access_token(client, make_user):
    user = make_user("alice")
    r = client.post("/api/v1/auth/token", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer"
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == user.id
    # usernames are case-insensitive at login
    assert (
        client.post("/api/v1/auth/token", data={"username": "ALICE", "password": PASSWORD}).status_code == 200
    )


@pytest.mark.parametrize(
    "form",
    [
        {"username": "alice", "password": "wrong password"},
        {"username": "nobody", "password": PASSWORD},
    ],
)
def test_wrong_credentials_are_401_without_saying_which(client, make_user, form):
    make_user("alice")
    r = client.post("/api/v1/auth/token", data=form)
    assert r.status_code == 401
    assert r.json()["detail"] == "wrong username or password"


def test_missing_form_fields_are_422(client):
    assert client.post("/api/v1/auth/token", data={"username": "x"}).status_code == 422


def test_deactivated_user_cannot_log_in_or_use_tokens(client, db, make_user, auth_headers):
    from app.services.users import update_user

    make_user("root", admin=True)
    user = make_user("bob")
    headers = auth_headers(user)
    update_user(db, user, is_active=False)
    assert (
        client.post("/api/v1/auth/token", data={"username": "bob", "password": PASSWORD}).status_code == 401
    )
    assert client.get("/api/v1/users/me", headers=headers).status_code == 401


def test_login_attempts_are_rate_limited(client, app, make_user):
    make_user("carol")
    limit = app.state.settings.login_attempts_per_minute
    for _ in range(limit):
        assert (
            client.post(
                "/api/v1/auth/token", data={"username": "carol", "password": "bad password"}
            ).status_code
            == 401
        )
    r = client.post("/api/v1/auth/token", data={"username": "carol", "password": PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    # another account is not locked by carol's attacker
    make_user("dave")
    assert (
        client.post("/api/v1/auth/token", data={"username": "dave", "password": PASSWORD}).status_code == 200
    )


def test_the_login_limit_is_shared_by_every_web_process_and_cleared_by_a_success(client, settings, make_user):
    from fastapi.testclient import TestClient

    from app.main import create_app

    make_user("frank")
    limit = settings.login_attempts_per_minute
    bad = {"username": "Frank", "password": "bad password"}  # usernames match case-insensitively
    with TestClient(create_app(settings)) as other:  # a second web process on the same database
        for i in range(limit - 1):
            assert (client if i % 2 else other).post("/api/v1/auth/token", data=bad).status_code == 401
        ok = {"username": "frank", "password": PASSWORD}
        assert other.post("/api/v1/auth/token", data=ok).status_code == 200  # a success clears the count
        for i in range(limit):
            assert (client if i % 2 else other).post("/api/v1/auth/token", data=bad).status_code == 401
        assert client.post("/api/v1/auth/token", data=ok).status_code == 429
        assert other.post("/api/v1/auth/token", data=ok).status_code == 429


def test_forged_and_garbage_bearer_tokens_are_401(client, make_user, settings):
    user = make_user()
    other = settings.model_copy(update={"secret_key": "another-secret"})
    forged = security.create_access_token(user, other)
    for token in (forged, "garbage", "sst_" + "x" * 43):
        r = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, token


def test_password_change_ends_access_tokens(client, make_user):
    make_user("erin")
    token = client.post("/api/v1/auth/token", data={"username": "erin", "password": PASSWORD}).json()[
        "access_token"
    ]
    h = {"Authorization": f"Bearer {token}"}
    r = client.post(
        "/api/v1/users/me/password",
        headers=h,
        json={"current_password": "wrong one", "new_password": "n" * 12},
    )
    assert r.status_code == 403
    r = client.post(
        "/api/v1/users/me/password", headers=h, json={"current_password": PASSWORD, "new_password": "n" * 12}
    )
    assert r.status_code == 204
    assert client.get("/api/v1/users/me", headers=h).status_code == 401
    assert (
        client.post("/api/v1/auth/token", data={"username": "erin", "password": "n" * 12}).status_code == 200
    )


def test_personal_tokens_are_shown_once_listed_and_revocable(client, db, make_user, auth_headers):
    from app.tables import ApiToken

    user = make_user()
    h = auth_headers(user)
    r = client.post("/api/v1/tokens", headers=h, json={"name": "ci", "expires_in_days": 30})
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["token"]
    assert token.startswith("sst_") and created["prefix"] == token[:12]
    # stored hashed only
    row = db.get(ApiToken, created["id"])
    assert row.token_hash == security.hash_api_token(token) and token not in row.token_hash
    listed = client.get("/api/v1/tokens", headers=h).json()
    assert {t["name"] for t in listed} == {"tests", "ci"}
    assert all("token" not in t for t in listed)
    own = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/users/me", headers=own).status_code == 200
    assert client.delete(f"/api/v1/tokens/{created['id']}", headers=h).status_code == 204
    assert client.get("/api/v1/users/me", headers=own).status_code == 401


def test_tokens_of_others_cannot_be_revoked(client, make_user, auth_headers):
    a, b = make_user(), make_user()
    tid = client.post("/api/v1/tokens", headers=auth_headers(a), json={"name": "a"}).json()["id"]
    assert client.delete(f"/api/v1/tokens/{tid}", headers=auth_headers(b)).status_code == 404


def test_expired_token_is_refused(client, db, make_user):
    from datetime import UTC, datetime, timedelta

    from app.services.users import create_token

    user = make_user()
    row, token = create_token(db, user, "old", expires_in_days=1)
    row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    db.commit()
    assert client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def _session_cookie(user, settings) -> tuple[str, str]:
    response = Response()
    csrf = security.login_session(response, user, settings)
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    return cookie.split(";", 1)[0].split("=", 1)[1], csrf


def test_session_cookie_works_and_unsafe_methods_need_the_csrf_header(client, settings, make_user):
    user = make_user()
    cookie, csrf = _session_cookie(user, settings)
    client.cookies.set(settings.session_cookie, cookie)
    assert client.get("/api/v1/users/me").json()["id"] == user.id
    body = {"name": "via browser", "labels": ["a", "b"]}
    r = client.post("/api/v1/projects", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = client.post("/api/v1/projects", json=body, headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403
    r = client.post("/api/v1/projects", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text


def test_tampered_session_cookie_is_401(client, settings, make_user):
    user = make_user()
    cookie, _ = _session_cookie(user, settings)
    client.cookies.set(
        settings.session_cookie, cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]
    )
    assert client.get("/api/v1/users/me").status_code == 401


def test_csrf_helpers_without_a_session(app, settings):
    """The login form's pre-session token: bound to a cookie, verified against it."""
    from starlette.requests import Request

    def request(cookies: dict[str, str]) -> Request:
        header = "; ".join(f"{k}={v}" for k, v in cookies.items())
        scope = {
            "type": "http",
            "app": app,
            "headers": [(b"cookie", header.encode())] if header else [],
            "method": "GET",
        }
        return Request(scope)

    first = request({})
    token = security.csrf_token(first)
    response = Response()
    security.attach_csrf_cookie(first, response)
    name, value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)
    second = request({name: value})
    assert security.csrf_token(second) == token
    assert security.verify_csrf(second, token)
    assert not security.verify_csrf(second, token + "x")
    assert not security.verify_csrf(request({}), token)


def test_site_admin_manages_users(client, make_user, auth_headers):
    admin = make_user(admin=True)
    plain = make_user()
    ha, hp = auth_headers(admin), auth_headers(plain)
    assert client.get("/api/v1/users", headers=hp).status_code == 403
    assert (
        client.post("/api/v1/users", headers=hp, json={"username": "x1", "password": "p" * 10}).status_code
        == 403
    )
    r = client.post("/api/v1/users", headers=ha, json={"username": "frank", "password": "p" * 10})
    assert r.status_code == 201, r.text
    assert (
        client.post("/api/v1/users", headers=ha, json={"username": "Frank", "password": "p" * 10}).status_code
        == 409
    )
    assert (
        client.post("/api/v1/users", headers=ha, json={"username": "../x", "password": "p" * 10}).status_code
        == 422
    )
    assert (
        client.post("/api/v1/users", headers=ha, json={"username": "ok", "password": "short"}).status_code
        == 422
    )
    names = [u["username"] for u in client.get("/api/v1/users", headers=ha).json()]
    assert "frank" in names
    uid = r.json()["id"]
    assert (
        client.patch(f"/api/v1/users/{uid}", headers=ha, json={"is_active": False}).json()["is_active"]
        is False
    )
    # the last active admin cannot demote themselves
    r = client.patch(f"/api/v1/users/{admin.id}", headers=ha, json={"is_admin": False})
    assert r.status_code == 409
