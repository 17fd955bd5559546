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

from app.models import LoginFailure, User, as_utc, utcnow
from app.security import settings_of
from app.services.users import authenticate


class LoginRateLimiter:
    """Failed login attempts per (username, client address) in a sliding window, in the database.

    Every web process (and host) sees the same count, and a restart does not reset it. Rows older
    than the window are pruned as failures are recorded; a successful login clears its key.
    """

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s

    @staticmethod
    def _key(username: str, client: str) -> str:
        return hashlib.sha256(f"{username.lower()}\0{client}".encode()).hexdigest()

    def retry_after(self, session: Session, username: str, client: str) -> int:
        """Seconds until another attempt is allowed; 0 when allowed now."""
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

    def record_failure(self, session: Session, username: str, client: str) -> None:
        """Record a failure (committed at once: the request goes on to fail)."""
        now = utcnow()
        session.execute(delete(LoginFailure).where(LoginFailure.at <= now - timedelta(seconds=self.window_s)))
        session.add(LoginFailure(key=self._key(username, client), at=now))
        session.commit()

    def reset(self, session: Session, username: str, client: str) -> None:
        session.execute(delete(LoginFailure).where(LoginFailure.key == self._key(username, client)))
        session.commit()


def login_limiter(request: Request) -> LoginRateLimiter:
    """The app's limiter (created on first use and kept on app.state)."""
    state = request.app.state
    limiter = getattr(state, "login_limiter", None)
    if limiter is None:
        limiter = LoginRateLimiter(settings_of(request).login_attempts_per_minute)
        state.login_limiter = limiter
    return limiter


def login_with_password(request: Request, session: Session, username: str, password: str) -> User:
    """Check a username and password for `/auth/token` and the `/login` form.

    Raises HTTPException 429 (too many failed attempts in the last minute, with Retry-After) or
    401 (wrong username or password, or a deactivated account; the message does not say which).
    """
    limiter = login_limiter(request)
    client = request.client.host if request.client else "unknown"
    wait = limiter.retry_after(session, username, client)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many failed login attempts; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    user = authenticate(session, username, password)
    if user is None:
        limiter.record_failure(session, username, client)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="wrong username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    limiter.reset(session, username, client)
    return user
