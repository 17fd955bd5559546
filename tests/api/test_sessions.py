"""Sessions and tokens: server-side logout, cookies over HTTPS, CSRF on logout, token scope,
expiry and revocation on password change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import Response

from app import security
from app.tables import as_utc
from tests.api.conftest import PASSWORD


def _login(client, settings, user):
    response = Response()
    csrf = security.login_session(response, user, settings)
    cookie = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    client.cookies.set(settings.session_cookie, cookie)
    return cookie, csrf


def test_logout_needs_csrf_and_ends_the_session_server_side(client, settings, make_user):
    user = make_user()
    cookie, csrf = _login(client, settings, user)
    assert client.post("/api/v1/auth/logout").status_code == 403  # no CSRF token
    assert client.get("/api/v1/users/me").status_code == 200
    assert client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    # a copy of the old cookie (stolen, or another tab) no longer works
    client.cookies.clear()
    client.cookies.set(settings.session_cookie, cookie)
    assert client.get("/api/v1/users/me").status_code == 401


def test_page_logout_ends_the_session_server_side(client, settings, make_user):
    user = make_user()
    cookie, csrf = _login(client, settings, user)
    response = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303
    client.cookies.clear()
    client.cookies.set(settings.session_cookie, cookie)
    assert client.get("/api/v1/users/me").status_code == 401


def test_password_change_ends_sessions_and_revokes_api_tokens(client, settings, make_user, auth_headers):
    user = make_user()
    cookie, csrf = _login(client, settings, user)
    token_headers = auth_headers(user)
    kept_user = make_user()
    kept_headers = auth_headers(kept_user)
    body = {"current_password": PASSWORD, "new_password": "a brand new password"}
    r = client.post("/api/v1/users/me/password", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204, r.text
    assert client.get("/api/v1/users/me").status_code == 401  # the session ended
    client.cookies.clear()
    assert client.get("/api/v1/users/me", headers=token_headers).status_code == 401  # token revoked
    # keeping tokens explicitly
    body = {"current_password": PASSWORD, "new_password": "a brand new password", "keep_api_tokens": True}
    assert client.post("/api/v1/users/me/password", headers=kept_headers, json=body).status_code == 204
    assert client.get("/api/v1/users/me", headers=kept_headers).status_code == 200


def test_https_cookies_are_secure_host_prefixed(app, make_user):
    from fastapi.testclient import TestClient

    make_user("hanna")
    with TestClient(app, base_url="https://sage.example") as c:
        page = c.get("/login")
        csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        r = c.post(
            "/login",
            data={"username": "hanna", "password": PASSWORD, "csrf_token": csrf},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        cookie = [h for h in r.headers.get_list("set-cookie") if "session=" in h and "Max-Age=0" not in h][0]
        assert cookie.startswith("__Host-sage_session=")
        low = cookie.lower()
        assert "secure" in low and "httponly" in low and "samesite=lax" in low and "path=/" in low
        assert "domain=" not in low
        assert c.get("/api/v1/users/me").status_code == 200
        assert "strict-transport-security" in r.headers


def test_read_only_tokens_cannot_write(client, make_user, auth_headers):
    user = make_user()
    r = client.post("/api/v1/tokens", headers=auth_headers(user), json={"name": "ro", "scope": "read"})
    assert r.status_code == 201 and r.json()["scope"] == "read"
    h = {"Authorization": f"Bearer {r.json()['token']}"}
    assert client.get("/api/v1/projects", headers=h).status_code == 200
    r = client.post("/api/v1/projects", headers=h, json={"name": "x", "labels": ["a", "b"]})
    assert r.status_code == 403 and "read-only" in r.json()["detail"]


def test_tokens_expire_by_default(client, settings, make_user, auth_headers):
    user = make_user()
    r = client.post("/api/v1/tokens", headers=auth_headers(user), json={"name": "ci"})
    expires = as_utc(datetime.fromisoformat(r.json()["expires_at"]))
    expected = datetime.now(UTC) + timedelta(days=settings.api_token_default_ttl_days)
    assert abs((expires - expected).total_seconds()) < 60
