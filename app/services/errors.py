"""Errors raised by services; each is one HTTP status and a `detail` saying what to fix.

They subclass Starlette's HTTPException (not FastAPI's routing), so a route can let them
propagate and FastAPI's default handler answers `{"detail": ...}` with the status, while the CLI
and the worker catch them as ordinary exceptions (`str(exc)` is the detail).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException


class ServiceError(HTTPException):
    status_code = 400

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(type(self).status_code, detail=detail, headers=headers)

    def __str__(self) -> str:
        return self.detail if isinstance(self.detail, str) else repr(self.detail)


class NotFound(ServiceError):
    status_code = 404


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409


class Invalid(ServiceError):
    """Well-formed request, unusable content: 422."""

    status_code = 422


class TooLarge(ServiceError):
    status_code = 413


class Unsupported(ServiceError):
    status_code = 415


class BadRequest(ServiceError):
    status_code = 400


class TooManyRequests(ServiceError):
    """Too much queued work of this kind: 429 (with a Retry-After header)."""

    status_code = 429
