"""The password login flow of `POST /auth/token` and the `/login` form, and its rate limit.

Failed attempts are counted per (username, client address) in the database (`LoginFailure`), so
every web process and host sees the same count and a restart does not reset it. Credentials
themselves (hashing, tokens, cookies) are app/security.py.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from fastapi import HTTPException, Request, status
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.security import settings_of, verify_password
from app.services.users import authenticate
from app.tables import LoginFailure, User, as_utc, utcnow


class TooManyAttempts(Exception):
    def __init__(self, wait_s: int) -> None:
        super().__init__(wait_s)
        self.wait_s = wait_s


class LoginRateLimiter:
    """Password attempts in a sliding window, kept in the database (`login_failures`), with three
    limits: per (username, client address), per client address across usernames (one address
    guessing many accounts), and per username across addresses (many addresses guessing one).

    Race-free without locks: an attempt first inserts and commits its rows (one per key), then
    counts them; the k-th attempt to commit sees at least k rows, so no burst of parallel requests
    gets more password checks than the limit. A refused attempt removes its rows again (it checked
    no password), a successful one removes its own rows and the (username, address) history.
    Keys are SHA-256 digests, so a password typed into the username field is never stored.
    """

    def __init__(
        self, per_minute: int, per_address: int = 0, per_username: int = 0, window_s: float = 60.0
    ) -> None:
        self.per_minute = per_minute
        self.per_address = per_address or per_minute * 3
        self.per_username = per_username or per_minute * 3
        self.window_s = window_s

    @staticmethod
    def _key(username: str, client: str) -> str:
        return hashlib.sha256(f"{username.lower()}\0{client}".encode()).hexdigest()

    @staticmethod
    def _address_key(client: str) -> str:
        return hashlib.sha256(f"address\0{client}".encode()).hexdigest()

    @staticmethod
    def _username_key(username: str) -> str:
        return hashlib.sha256(f"username\0{username.lower()}".encode()).hexdigest()

    def _limits(self, username: str, client: str) -> dict[str, int]:
        return {
            self._key(username, client): self.per_minute,
            self._address_key(client): self.per_address,
            self._username_key(username): self.per_username,
        }

    def begin(self, session: Session, username: str, client: str) -> list[int]:
        """Count this attempt; returns its row ids. Raises TooManyAttempts (with the wait) when any
        limit is passed; then nothing of this attempt stays counted."""
        now = utcnow()
        since = now - timedelta(seconds=self.window_s)
        limits = self._limits(username, client)
        session.execute(delete(LoginFailure).where(LoginFailure.at <= since))
        rows = [LoginFailure(key=key, at=now) for key in limits]
        session.add_all(rows)
        session.commit()
        ids = [row.id for row in rows]
        counts = session.execute(
            select(LoginFailure.key, func.count(), func.min(LoginFailure.at))
            .where(LoginFailure.key.in_(list(limits)), LoginFailure.at > since)
            .group_by(LoginFailure.key)
        ).all()
        wait = 0
        for key, count, oldest in counts:
            oldest_at = as_utc(oldest)
            if count > limits[key] and oldest_at is not None:
                wait = max(wait, max(1, int(self.window_s - (now - oldest_at).total_seconds()) + 1))
        if wait:
            self._forget(session, ids)
            raise TooManyAttempts(wait)
        return ids

    def _forget(self, session: Session, ids: list[int]) -> None:
        session.execute(delete(LoginFailure).where(LoginFailure.id.in_(ids)))
        session.commit()

    def succeeded(self, session: Session, ids: list[int], username: str, client: str) -> None:
        session.execute(
            delete(LoginFailure).where(
                LoginFailure.id.in_(ids) | (LoginFailure.key == self._key(username, client))
            )
        )
        session.commit()

    def retry_after(self, session: Session, username: str, client: str) -> int:
        """Seconds until the (username, address) pair may try again; 0 when allowed now."""
        now = utcnow()
        since = now - timedelta(seconds=self.window_s)
        count, oldest = session.execute(
            select(func.count(), func.min(LoginFailure.at)).where(
                LoginFailure.key == self._key(username, client), LoginFailure.at > since
            )
        ).one()
        oldest_at = as_utc(oldest)
        if count < self.per_minute or oldest_at is None:
            return 0
        return max(1, int(self.window_s - (now - oldest_at).total_seconds()) + 1)


def login_limiter(request: Request) -> LoginRateLimiter:
    """The app's limiter (created on first use and kept on app.state)."""
    state = request.app.state
    limiter = getattr(state, "login_limiter", None)
    if limiter is None:
        settings = settings_of(request)
        limiter = LoginRateLimiter(
            settings.login_attempts_per_minute,
            settings.login_attempts_per_address_per_minute,
            settings.login_attempts_per_username_per_minute,
        )
        state.login_limiter = limiter
    return limiter


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _too_many(wait: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=f"too many failed password attempts; try again in {wait} s",
        headers={"Retry-After": str(wait)},
    )


def check_password_throttled(request: Request, session: Session, user: User, password: str) -> bool:
    """The password check of a signed-in user (password change), under the same limits as login.
    Raises 429 when over a limit; returns whether the password is right."""
    limiter = login_limiter(request)
    client = client_address(request)
    try:
        ids = limiter.begin(session, user.username, client)
    except TooManyAttempts as exc:
        raise _too_many(exc.wait_s) from None
    ok = verify_password(user.password_hash, password)
    if ok:
        limiter.succeeded(session, ids, user.username, client)
    return ok


def login_with_password(request: Request, session: Session, username: str, password: str) -> User:
    """Check a username and password for `/auth/token` and the `/login` form.

    Raises HTTPException 429 (too many failed attempts in the last minute, with Retry-After) or
    401 (wrong username or password, or a deactivated account; the message does not say which).
    """
    limiter = login_limiter(request)
    client = client_address(request)
    try:
        ids = limiter.begin(session, username, client)
    except TooManyAttempts as exc:
        raise _too_many(exc.wait_s) from None
    user = authenticate(session, username, password)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="wrong username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    limiter.succeeded(session, ids, username, client)
    return user
