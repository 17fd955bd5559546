"""FastAPI dependencies as named types: the session, settings, storage, the caller and project access.

Routes read like the API: `def get_image(image: ImageViewer) -> ...`. Access rules (DESIGN.md 8):
site admins may do everything; in a project, roles are ordered viewer < annotator < manager.
A caller who is not a member gets 404 (the project's existence is not revealed), a member whose
role is too low gets 403.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Path, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import security
from app.services.lookups import get_or_404
from app.services.users import api_token_owner
from app.settings import Settings
from app.storage import Storage, get_storage
from app.tables import Annotation, Image, Project, ProjectMember, Role, User

R = TypeVar("R")  # a table with a project_id column

MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.session_factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_storage_dep(request: Request) -> Storage:
    storage = getattr(request.app.state, "storage", None)
    if storage is None:
        storage = get_storage(request.app.state.settings)
        request.app.state.storage = storage
    return storage


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StorageDep = Annotated[Storage, Depends(get_storage_dep)]

_UNAUTHORIZED = (
    "not signed in: send `Authorization: Bearer <token>` (POST /api/v1/auth/token) or sign in at /login"
)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def _user_from_bearer(
    session: Session, settings: Settings, credential: str, method: str = "GET"
) -> User | None:
    """The bearer's user, or None. HTTPException 403 when a read-only API token tries to write."""
    if security.is_api_token(credential):
        found = api_token_owner(session, credential)
        if found is None:
            return None
        user, row = found
        if row.scope == "read" and method not in ("GET", "HEAD", "OPTIONS"):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail="this API token is read-only; create a token with scope 'write' to change data",
            )
        return user
    claims = security.read_access_token(credential, settings)
    if claims is None:
        return None
    user = session.get(User, claims["uid"])
    if user is None or not user.is_active:
        return None
    if claims.get("pw") != security.password_fingerprint(user.password_hash):
        return None  # the password changed since the token was issued
    return user


def _user_from_cookie(request: Request, session: Session, settings: Settings) -> User | None:
    browser = security.read_session(request, settings)
    if browser is None:
        return None
    user = session.get(User, browser.user_id)
    if user is None or not user.is_active:
        return None
    if browser.password_fingerprint != security.password_fingerprint(user.password_hash):
        return None
    if browser.epoch != (user.session_epoch or 0):
        return None  # logged out or password changed since this session began
    return user


def optional_user(request: Request, session: SessionDep, settings: SettingsDep) -> User | None:
    """The caller from a bearer token or the session cookie, or None. Checks no CSRF token:
    page routes that accept form posts call `security.verify_csrf` themselves."""
    credential = _bearer(request)
    if credential is not None:
        return _user_from_bearer(session, settings, credential, request.method)
    return _user_from_cookie(request, session, settings)


def current_user(request: Request, session: SessionDep, settings: SettingsDep) -> User:
    """The caller, or 401. A bearer token wins over the cookie. A request authenticated by the
    session cookie with an unsafe method must carry the session's CSRF token in `X-CSRF-Token`
    (403 otherwise); bearer-token requests need none (browsers never attach them by themselves)."""
    credential = _bearer(request)
    if credential is not None:
        user = _user_from_bearer(session, settings, credential, request.method)
        if user is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="the bearer token is invalid, expired or revoked; get a new one",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return user
    user = _user_from_cookie(request, session, settings)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail=_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}
        )
    if request.method in security.UNSAFE_METHODS and not security.verify_csrf(
        request, request.headers.get(security.CSRF_HEADER)
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"missing or wrong CSRF token: send the session's token in the {security.CSRF_HEADER} header",
        )
    return user


CurrentUser = Annotated[User, Depends(current_user)]
OptionalUser = Annotated[User | None, Depends(optional_user)]


def require_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="only site admins may do this")
    return user


AdminUser = Annotated[User, Depends(require_admin)]


# --- project access ----------------------------------------------------------------------------


def member_role(session: Session, user: User, project_id: int) -> Role | None:
    """The user's role in the project (manager for site admins), or None."""
    if user.is_admin:
        return Role.MANAGER
    role = session.scalar(
        select(ProjectMember.role).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user.id
        )
    )
    return None if role is None else Role(role)


def check_project_access(session: Session, user: User, project_id: int, role: Role) -> Project:
    """The project when `user` may act in it with at least `role`; 404 for non-members, 403 below `role`."""
    project = session.get(Project, project_id)
    have = member_role(session, user, project_id) if project is not None else None
    if project is None or have is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no project {project_id}")
    if not have.at_least(role):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"this needs the {role} role in the project; you are {have}"
        )
    return project


ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="project id")]
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="image id")]


def project_for(role: Role) -> Callable[..., Project]:
    """A dependency: the project `{pid}` of the path if the caller has at least `role` in it."""

    def dependency(pid: ProjectId, user: CurrentUser, session: SessionDep) -> Project:
        return check_project_access(session, user, pid, role)

    dependency.__name__ = f"project_for_{role}"
    return dependency


def row_in_project(session: Session, user: User, table: type[R], row_id: int, what: str, role: Role) -> R:
    """The row `row_id` of `table` (a table with `project_id`) if the caller has at least `role` in
    its project: 404 "no <what> <id>" when it does not exist or the caller is not a member (who
    cannot tell the two apart), 403 below `role`."""
    row = get_or_404(session, table, row_id, what)
    try:
        check_project_access(session, user, row.project_id, role)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {what} {row_id}") from None
        raise
    return row


def image_for(role: Role) -> Callable[..., Image]:
    """A dependency: the image `{iid}` of the path if the caller has at least `role` in its project
    (404 for images of projects the caller is not a member of)."""

    def dependency(iid: ImageId, user: CurrentUser, session: SessionDep) -> Image:
        return row_in_project(session, user, Image, iid, "image", role)

    dependency.__name__ = f"image_for_{role}"
    return dependency


ProjectViewer = Annotated[Project, Depends(project_for(Role.VIEWER))]
ProjectAnnotator = Annotated[Project, Depends(project_for(Role.ANNOTATOR))]
ProjectManager = Annotated[Project, Depends(project_for(Role.MANAGER))]
ImageViewer = Annotated[Image, Depends(image_for(Role.VIEWER))]
ImageAnnotator = Annotated[Image, Depends(image_for(Role.ANNOTATOR))]
ImageManager = Annotated[Image, Depends(image_for(Role.MANAGER))]


def annotation_for_viewer(
    aid: Annotated[int, Path(ge=1, le=MAX_ID, description="annotation id")],
    user: CurrentUser,
    session: SessionDep,
) -> Annotation:
    """The annotation `{aid}` if the caller may view its project (404 otherwise)."""
    return row_in_project(session, user, Annotation, aid, "annotation", Role.VIEWER)


AnnotationViewer = Annotated[Annotation, Depends(annotation_for_viewer)]
