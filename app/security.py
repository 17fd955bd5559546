"""Credentials: Argon2 passwords, API and access tokens, signed session cookies, CSRF.

Pure primitives: nothing here reads or writes the database (the login flow and its rate limit are
the service app/services/login.py, the accounts app/services/users.py).

Three ways to be a user, all resolved by `app.deps.CurrentUser`:

- an **access token** from `POST /auth/token`: signed with the secret key (itsdangerous), carrying the
  user id and a fingerprint of the password hash, so a password change invalidates it;
- a **personal API token** (`sst_...`, 256 random bits): only its SHA-256 is stored;
- the **browser session cookie**: signed, HttpOnly, SameSite=Lax (Secure in production), carrying
  the user id, the password fingerprint and a CSRF nonce. Unsafe methods authenticated by the
  cookie must send that nonce back (`X-CSRF-Token` header for the REST API, a `csrf_token` form
  field for page forms checked with `verify_csrf`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import Request, Response
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.tables import User

API_TOKEN_PREFIX = "sst_"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# --- passwords ---------------------------------------------------------------------------------

# argon2-cffi's defaults (RFC 9106 low-memory profile). Tests swap in a cheaper hasher.
password_hasher = PasswordHasher()
# Verified against when the username does not exist, so a failed login takes the same time either
# way: made with the current hasher's parameters (re-made if they change), so it costs what a real
# account's check costs.
_dummy_hashes: dict[tuple, str] = {}


def _dummy_hash() -> str:
    hasher = password_hasher
    params = (hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len, hasher.salt_len)
    if params not in _dummy_hashes:
        _dummy_hashes[params] = hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hashes[params]


def hash_password(password: str) -> str:
    return password_hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return password_hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    try:
        return password_hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def burn_password_check(password: str) -> None:
    """Spend the time of one verification (for unknown usernames)."""
    verify_password(_dummy_hash(), password)


def password_fingerprint(password_hash: str) -> str:
    """A short digest of the stored hash: sessions and access tokens die when the password changes."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


# --- personal API tokens -------------------------------------------------------------------------


def new_api_token() -> str:
    """A fresh personal API token: `sst_` + 43 URL-safe characters (256 random bits)."""
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    """SHA-256 hex of a token. Tokens are 256-bit random, so a fast hash is enough (no dictionary)."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_api_token(credential: str) -> bool:
    return credential.startswith(API_TOKEN_PREFIX)


# --- signed access tokens and session cookies ---------------------------------------------------


def _serializer(settings: Settings, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key, salt=salt)


def create_access_token(user: User, settings: Settings) -> str:
    return _serializer(settings, "sage-access-token").dumps(
        {"uid": user.id, "pw": password_fingerprint(user.password_hash)}
    )


def read_access_token(token: str, settings: Settings) -> dict[str, Any] | None:
    """The token's claims {"uid", "pw"}, or None when it is forged, malformed or expired."""
    try:
        claims = _serializer(settings, "sage-access-token").loads(token, max_age=settings.access_token_ttl_s)
    except (BadSignature, SignatureExpired, ValueError, TypeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("uid"), int):
        return None
    return claims


@dataclass(frozen=True)
class BrowserSession:
    user_id: int
    password_fingerprint: str
    csrf: str
    epoch: int = 0


HOST_PREFIX = "__Host-"


def is_https(request: Request | None) -> bool:
    return request is not None and request.scope.get("scheme") == "https"


def session_cookie_name(settings: Settings, https: bool) -> str:
    """Over HTTPS the cookie is `__Host-<name>`: the browser then only accepts it Secure, for this
    exact host and path /, so a sibling subdomain cannot plant or overwrite it."""
    return HOST_PREFIX + settings.session_cookie if https else settings.session_cookie


def _csrf_cookie(settings: Settings, https: bool = False) -> str:
    return session_cookie_name(settings, https) + "_csrf"


def _set_cookie(
    response: Response, name: str, value: str, settings: Settings, max_age: int, https: bool = False
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=https or settings.env == "production",
        path="/",
    )


def login_session(response: Response, user: User, settings: Settings, request: Request | None = None) -> str:
    """Start a browser session for `user` on `response` (a fresh CSRF nonce); returns that nonce.
    The session carries the user's session epoch: logout and password change end it server side."""
    https = is_https(request)
    csrf = secrets.token_urlsafe(24)
    value = _serializer(settings, "sage-session").dumps(
        {
            "uid": user.id,
            "pw": password_fingerprint(user.password_hash),
            "csrf": csrf,
            "ep": user.session_epoch or 0,
        }
    )
    _set_cookie(
        response, session_cookie_name(settings, https), value, settings, settings.session_max_age_s, https
    )
    response.delete_cookie(_csrf_cookie(settings, https), path="/", secure=https)
    return csrf


def logout_session(response: Response, settings: Settings, request: Request | None = None) -> None:
    https = is_https(request)
    response.delete_cookie(session_cookie_name(settings, https), path="/", secure=https, httponly=True)
    response.delete_cookie(_csrf_cookie(settings, https), path="/", secure=https, httponly=True)


def end_sessions(session: Session, user: User) -> None:
    """End every browser session of `user` issued so far (bumps the epoch; the caller commits)."""
    from sqlalchemy import update

    from app.tables import User as UserRow

    session.execute(
        update(UserRow).where(UserRow.id == user.id).values(session_epoch=UserRow.session_epoch + 1)
    )
    session.expire(user, ["session_epoch"])


def read_session(request: Request, settings: Settings) -> BrowserSession | None:
    """The signed session in the request's cookie, or None (absent, forged or expired)."""
    raw = request.cookies.get(session_cookie_name(settings, is_https(request)))
    if not raw:
        return None
    try:
        data = _serializer(settings, "sage-session").loads(raw, max_age=settings.session_max_age_s)
    except (BadSignature, SignatureExpired, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("uid"), int):
        return None
    epoch = data.get("ep", 0)
    return BrowserSession(
        user_id=data["uid"],
        password_fingerprint=str(data.get("pw", "")),
        csrf=str(data.get("csrf", "")),
        epoch=epoch if isinstance(epoch, int) else -1,
    )


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def csrf_token(request: Request) -> str:
    """The CSRF token to embed in a form (hidden field `csrf_token`) or send as `X-CSRF-Token`.

    With a session it is the session's nonce. Before login (the /login form) it is a pre-session
    nonce from the `<session_cookie>_csrf` cookie; when the browser has none yet a new one is made,
    and the page must call `attach_csrf_cookie(request, response)` so the browser keeps it.
    """
    settings = settings_of(request)
    session = read_session(request, settings)
    if session:
        return session.csrf
    existing = request.cookies.get(_csrf_cookie(settings, is_https(request)))
    if existing:
        try:
            return _serializer(settings, "sage-csrf").loads(existing, max_age=settings.session_max_age_s)
        except (BadSignature, SignatureExpired, ValueError, TypeError):
            pass
    nonce = getattr(request.state, "new_csrf_nonce", None)
    if nonce is None:
        nonce = secrets.token_urlsafe(24)
        request.state.new_csrf_nonce = nonce
    return nonce


def attach_csrf_cookie(request: Request, response: Response) -> None:
    """Store a pre-session CSRF nonce made by `csrf_token` during this request (no-op otherwise)."""
    nonce = getattr(request.state, "new_csrf_nonce", None)
    if nonce is None:
        return
    settings = settings_of(request)
    value = _serializer(settings, "sage-csrf").dumps(nonce)
    https = is_https(request)
    _set_cookie(response, _csrf_cookie(settings, https), value, settings, settings.session_max_age_s, https)


def verify_csrf(request: Request, token: str | None) -> bool:
    """True when `token` is this browser's CSRF token (session nonce, else pre-session cookie nonce)."""
    if not token:
        return False
    settings = settings_of(request)
    session = read_session(request, settings)
    if session:
        expected = session.csrf
    else:
        raw = request.cookies.get(_csrf_cookie(settings, is_https(request)))
        if not raw:
            return False
        try:
            expected = _serializer(settings, "sage-csrf").loads(raw, max_age=settings.session_max_age_s)
        except (BadSignature, SignatureExpired, ValueError, TypeError):
            return False
    return bool(expected) and hmac.compare_digest(str(expected).encode(), token.encode())
