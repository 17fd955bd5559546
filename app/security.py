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
    from app.models import User

API_TOKEN_PREFIX = "sst_"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# --- passwords ---------------------------------------------------------------------------------

# argon2-cffi's defaults (RFC 9106 low-memory profile). Tests swap in a cheaper hasher.
password_hasher = PasswordHasher()
# Verified against when the username does not exist, so a failed login takes the same time either way.
_DUMMY_HASH = password_hasher.hash(secrets.token_urlsafe(16))


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
    verify_password(_DUMMY_HASH, password)


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


def _csrf_cookie(settings: Settings) -> str:
    return settings.session_cookie + "_csrf"


def _set_cookie(response: Response, name: str, value: str, settings: Settings, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=settings.env == "production",
        path="/",
    )


def login_session(response: Response, user: User, settings: Settings) -> str:
    """Start a browser session for `user` on `response` (a fresh CSRF nonce); returns that nonce."""
    csrf = secrets.token_urlsafe(24)
    value = _serializer(settings, "sage-session").dumps(
        {"uid": user.id, "pw": password_fingerprint(user.password_hash), "csrf": csrf}
    )
    _set_cookie(response, settings.session_cookie, value, settings, settings.session_max_age_s)
    response.delete_cookie(_csrf_cookie(settings), path="/")
    return csrf


def logout_session(response: Response, settings: Settings) -> None:
    response.delete_cookie(settings.session_cookie, path="/")
    response.delete_cookie(_csrf_cookie(settings), path="/")


def read_session(request: Request, settings: Settings) -> BrowserSession | None:
    """The signed session in the request's cookie, or None (absent, forged or expired)."""
    raw = request.cookies.get(settings.session_cookie)
    if not raw:
        return None
    try:
        data = _serializer(settings, "sage-session").loads(raw, max_age=settings.session_max_age_s)
    except (BadSignature, SignatureExpired, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("uid"), int):
        return None
    return BrowserSession(
        user_id=data["uid"], password_fingerprint=str(data.get("pw", "")), csrf=str(data.get("csrf", ""))
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
    existing = request.cookies.get(_csrf_cookie(settings))
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
    _set_cookie(response, _csrf_cookie(settings), value, settings, settings.session_max_age_s)


def verify_csrf(request: Request, token: str | None) -> bool:
    """True when `token` is this browser's CSRF token (session nonce, else pre-session cookie nonce)."""
    if not token:
        return False
    settings = settings_of(request)
    session = read_session(request, settings)
    if session:
        expected = session.csrf
    else:
        raw = request.cookies.get(_csrf_cookie(settings))
        if not raw:
            return False
        try:
            expected = _serializer(settings, "sage-csrf").loads(raw, max_age=settings.session_max_age_s)
        except (BadSignature, SignatureExpired, ValueError, TypeError):
            return False
    return bool(expected) and hmac.compare_digest(str(expected).encode(), token.encode())
