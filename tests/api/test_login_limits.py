"""Login throttling per address and per username, race-free; throttled password change; equal cost."""

from __future__ import annotations

import threading

import argon2
import pytest

from app import security
from app.services import login
from app.settings import Settings
from tests.api.conftest import PASSWORD


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="test-secret-key",
        login_attempts_per_minute=3,
        login_attempts_per_address_per_minute=5,
        login_attempts_per_username_per_minute=4,
    )


def test_one_address_guessing_many_usernames_is_throttled(client, make_user):
    make_user("victim")
    for i in range(5):
        r = client.post("/api/v1/auth/token", data={"username": f"guess{i}", "password": "bad password"})
        assert r.status_code == 401
    r = client.post("/api/v1/auth/token", data={"username": "victim", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_many_addresses_guessing_one_username_are_throttled(db):
    limiter = login.LoginRateLimiter(3, per_address=100, per_username=4)
    for i in range(4):
        limiter.begin(db, "alice", f"10.0.0.{i}")
    with pytest.raises(login.TooManyAttempts):
        limiter.begin(db, "Alice", "10.0.0.99")
    # another username from those addresses is not affected
    limiter.begin(db, "bob", "10.0.0.1")


def test_parallel_attempts_never_exceed_the_limit(engine):
    from app.db import make_session_factory

    limiter = login.LoginRateLimiter(5, per_address=1000, per_username=1000)
    factory = make_session_factory(engine)
    allowed, refused = [], []
    barrier = threading.Barrier(12)

    def attempt():
        with factory() as session:
            barrier.wait()
            try:
                limiter.begin(session, "carol", "198.51.100.7")
                allowed.append(1)
            except login.TooManyAttempts:
                refused.append(1)

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) <= 5 and len(allowed) + len(refused) == 12


def test_current_password_check_of_password_change_is_throttled(client, make_user, auth_headers):
    user = make_user()
    headers = auth_headers(user)
    body = {"current_password": "wrong password", "new_password": "another long password"}
    codes = [
        client.post("/api/v1/users/me/password", headers=headers, json=body).status_code for _ in range(4)
    ]
    assert codes[:3] == [403, 403, 403] and codes[3] == 429
    # even the right password waits now
    body["current_password"] = PASSWORD
    assert client.post("/api/v1/users/me/password", headers=headers, json=body).status_code == 429


def test_unknown_users_cost_one_check_with_the_real_parameters(db, make_user, monkeypatch):
    from app.services import users as user_service

    user = make_user("erin")
    verified: list[str] = []
    hasher = security.password_hasher

    class Counting(type(hasher)):
        def verify(self, hash, password):
            verified.append(hash)
            return super().verify(hash, password)

    counting = Counting(time_cost=hasher.time_cost, memory_cost=hasher.memory_cost, parallelism=1)
    monkeypatch.setattr(security, "password_hasher", counting)
    assert user_service.authenticate(db, "no-such-user", "some password") is None
    assert user_service.authenticate(db, "erin", "some password") is None
    assert len(verified) == 2
    unknown, known = (argon2.extract_parameters(h) for h in verified)
    assert unknown == known == argon2.extract_parameters(user.password_hash)
