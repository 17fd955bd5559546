"""REST API v1: personal API tokens (created and shown once, listed, revoked)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.deps import MAX_ID, CurrentUser, SessionDep, SettingsDep
from app.schemas import ApiTokenCreate, ApiTokenCreated, ApiTokenOut
from app.services import users as user_service
from app.tables import ApiToken

router = APIRouter(tags=["tokens"])


@router.post("/tokens", response_model=ApiTokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(
    body: ApiTokenCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> ApiTokenCreated:
    """A new personal API token for scripts: send it as `Authorization: Bearer <token>`.

    The token is in this answer only; the server keeps its SHA-256. `scope: read` tokens may only
    read; tokens expire after `expires_in_days` (default set by the server) and are revoked when
    the password changes unless the change keeps them."""
    row, token = user_service.create_token(
        session,
        user,
        body.name,
        body.expires_in_days,
        scope=body.scope,
        default_ttl_days=settings.api_token_default_ttl_days,
    )
    return ApiTokenCreated.from_row(row, token=token)


@router.get("/tokens", response_model=list[ApiTokenOut])
def list_tokens(user: CurrentUser, session: SessionDep) -> list[ApiToken]:
    """Your tokens (without the secrets)."""
    return user_service.list_tokens(session, user)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, session: SessionDep
) -> Response:
    """Revoke one of your tokens; it stops working at once."""
    user_service.revoke_token(session, user, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
