"""REST API v1: sign in (access tokens), the current user, and site-admin user management."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Request, Response, status

from app import security
from app.deps import MAX_ID, AdminUser, CurrentUser, SessionDep, SettingsDep
from app.schemas import AccessToken, PasswordChange, UserCreate, UserOut, UserUpdate
from app.services import users as user_service
from app.services.login import check_password_throttled, login_with_password
from app.services.lookups import get_or_404
from app.tables import User

router = APIRouter(tags=["auth"])

FormText = Annotated[str, Form(min_length=1, max_length=1024, pattern=r"^[^\x00]*$")]


@router.post("/auth/token", response_model=AccessToken)
def issue_access_token(
    request: Request, session: SessionDep, settings: SettingsDep, username: FormText, password: FormText
) -> AccessToken:
    """Exchange a username and password (form fields) for a bearer access token.

    401 for a wrong pair; 429 after too many failed attempts in a minute (see Retry-After)."""
    user = login_with_password(request, session, username, password)
    return AccessToken(
        access_token=security.create_access_token(user, settings), expires_in=settings.access_token_ttl_s
    )


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Response:
    """End your browser sessions server side (every session cookie issued so far stops working)
    and clear the cookie. With the cookie, send the CSRF token like any other write. Bearer
    tokens are unaffected."""
    security.end_sessions(session, user)
    session.commit()
    out = Response(status_code=status.HTTP_204_NO_CONTENT)
    security.logout_session(out, settings, request)
    return out


@router.get("/users/me", response_model=UserOut)
def me(user: CurrentUser) -> User:
    return user


@router.post("/users/me/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(
    request: Request, body: PasswordChange, user: CurrentUser, session: SessionDep
) -> Response:
    """Change your password; every session and access token issued before ends (API tokens stay).
    The current-password check is throttled like sign-in (429 with Retry-After)."""
    if not check_password_throttled(request, session, user, body.current_password):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="the current password is wrong")
    user_service.update_user(session, user, password=body.new_password, keep_api_tokens=body.keep_api_tokens)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/users", response_model=list[UserOut])
def list_users(admin: AdminUser, session: SessionDep) -> list[User]:
    """Every account (site admins only)."""
    return user_service.list_users(session)


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, admin: AdminUser, session: SessionDep) -> User:
    """Create an account (site admins only). 409 when the username is taken."""
    return user_service.create_user(session, body.username, body.password, is_admin=body.is_admin)


@router.patch("/users/{uid:int}", response_model=UserOut)
def update_user(
    uid: Annotated[int, Path(ge=1, le=MAX_ID)], body: UserUpdate, admin: AdminUser, session: SessionDep
) -> User:
    """Reset a password, grant or revoke site admin, (de)activate an account (site admins only)."""
    user = get_or_404(session, User, uid, "user")
    return user_service.update_user(
        session, user, password=body.password, is_admin=body.is_admin, is_active=body.is_active
    )
