"""Accounts and personal API tokens: plain functions on a Session, used by routes, CLI and worker."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import security
from app.services.errors import Conflict, Invalid, NotFound
from app.tables import ApiToken, User, as_utc

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def normalise_username(username: str) -> str:
    return username.strip()


def check_username(username: str) -> str:
    username = normalise_username(username)
    if not USERNAME_RE.match(username):
        raise Invalid(
            "username must be 1-64 characters: letters, digits and _ . @ -, starting with a letter or digit"
        )
    return username


def check_password(password: str) -> str:
    if not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        raise Invalid(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")
    return password


def get_by_username(session: Session, username: str) -> User | None:
    """Usernames are unique ignoring case: `Alice` and `alice` are the same account."""
    return session.scalar(
        select(User).where(func.lower(User.username) == normalise_username(username).lower())
    )


def create_user(session: Session, username: str, password: str, is_admin: bool = False) -> User:
    """Create an account (commits). Raises Invalid (bad name/password) or Conflict (name taken)."""
    username = check_username(username)
    check_password(password)
    if get_by_username(session, username) is not None:
        raise Conflict(f"the username {username!r} is taken")
    user = User(username=username, password_hash=security.hash_password(password), is_admin=is_admin)
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"the username {username!r} is taken") from None
    return user


def update_user(
    session: Session,
    user: User,
    *,
    password: str | None = None,
    is_admin: bool | None = None,
    is_active: bool | None = None,
    keep_api_tokens: bool = False,
) -> User:
    """Change a password or flags (commits). A password change ends every browser session and
    access token, and revokes the user's personal API tokens unless `keep_api_tokens`."""
    if password is not None:
        user.password_hash = security.hash_password(check_password(password))
        security.end_sessions(session, user)
        if not keep_api_tokens:
            revoke_all_tokens(session, user)
    if is_admin is not None:
        user.is_admin = is_admin
    if is_active is not None:
        user.is_active = is_active
    if (is_admin is False or is_active is False) and not _another_active_admin(session, user):
        session.rollback()
        raise Conflict("this is the last active site admin; make another admin first")
    session.commit()
    return user


def _another_active_admin(session: Session, user: User) -> bool:
    if not (user.is_admin and user.is_active):
        # The change removes this user's admin powers: is someone else left?
        return bool(
            session.scalar(
                select(func.count())
                .select_from(User)
                .where(User.is_admin, User.is_active, User.id != user.id)
            )
        )
    return True


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, else None (constant work either way)."""
    user = get_by_username(session, username) if USERNAME_RE.match(normalise_username(username)) else None
    if user is None:
        security.burn_password_check(password)
        return None
    if not security.verify_password(user.password_hash, password) or not user.is_active:
        return None
    if security.password_needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
        session.commit()
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


# --- personal API tokens ---------------------------------------------------------------------------


TOKEN_SCOPES = ("read", "write")


def create_token(
    session: Session,
    user: User,
    name: str,
    expires_in_days: int | None = None,
    *,
    scope: str = "write",
    default_ttl_days: int = 0,
) -> tuple[ApiToken, str]:
    """A new personal API token (commits). Returns the row and the token, which is never stored.

    `scope` "read" allows only safe methods. Without `expires_in_days` the token lives
    `default_ttl_days` (0: until revoked)."""
    name = name.strip()
    if not name:
        raise Invalid("a token needs a name (what or where it is used)")
    if scope not in TOKEN_SCOPES:
        raise Invalid(f"scope must be one of {TOKEN_SCOPES}")
    token = security.new_api_token()
    days = expires_in_days or default_ttl_days
    expires_at = datetime.now(UTC) + timedelta(days=days) if days else None
    row = ApiToken(
        user_id=user.id,
        name=name,
        prefix=token[:12],
        token_hash=security.hash_api_token(token),
        expires_at=expires_at,
        scope=scope,
    )
    session.add(row)
    session.commit()
    return row, token


def list_tokens(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


def revoke_token(session: Session, user: User, token_id: int) -> ApiToken:
    """Revoke one of the user's own tokens (commits; revoking twice is fine)."""
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound("no such token")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.commit()
    return row


def revoke_all_tokens(session: Session, user: User) -> int:
    """Revoke every live token of `user` (the caller commits); returns how many."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]  # a CursorResult


def user_for_api_token(session: Session, token: str) -> User | None:
    """The active owner of a valid (not revoked, not expired) token; records last use."""
    found = api_token_owner(session, token)
    return found[0] if found else None


def api_token_owner(session: Session, token: str) -> tuple[User, ApiToken] | None:
    """(owner, token row) of a valid (not revoked, not expired) token of an active user, else None."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == security.hash_api_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    now = datetime.now(UTC)
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    last = as_utc(row.last_used_at)
    # Write at most once a minute per token: reads should not become writes on every request.
    if last is None or (now - last).total_seconds() > 60:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == row.id)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return user, row
