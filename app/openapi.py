"""The OpenAPI schema, completed so it tells the truth about error answers.

Every API route can answer some errors no route body raises itself: 401 (no or a bad credential),
403 (role too low, CSRF, read-only token), 404 (an id in the path that is not there, or not
visible), 409 (a conflicting write), 413 (the body limit, `app.hardening`), 415 (a file of the
wrong type), 422 (validation), 429 (sign-in throttling), 503 (a render or predict bound). The
generator adds each that applies to an operation and was not declared by the route, all with the
`{"detail": ...}` body every error has, so clients and schema-driven tests see them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.schemas import API

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"title": "Detail"}},
    "required": ["detail"],
}
DESCRIPTIONS = {
    "400": "malformed request",
    "401": "not signed in, or the credential is invalid, expired or revoked",
    "403": "not allowed: role too low, missing CSRF token, or a read-only token",
    "404": "not found (or not visible to you)",
    "409": "conflicts with the current state",
    "413": "the request body is over the limit",
    "415": "unsupported file type",
    "422": "invalid request",
    "429": "too many attempts; see Retry-After",
    "503": "busy; see Retry-After",
}
UNSAFE = {"post", "put", "patch", "delete"}


def _statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    codes = ["400", "401", "422"]
    if path != f"{API}/auth/token":
        codes.append("403")
    if "{" in path:
        codes.append("404")
    body = operation.get("requestBody")
    if body is not None or method in UNSAFE:
        codes.append("413")
    if body is not None:
        codes.append("415")
    codes.append("409")  # writes that conflict, and reads that need state (e.g. an active model)
    if path in (f"{API}/auth/token", f"{API}/users/me/password"):
        codes.append("429")
    return sorted(set(codes))


def _multipart_without_null(schema: dict[str, Any]) -> None:
    """A multipart form cannot send null: an optional field is simply left out. FastAPI renders
    `UploadFile | None` as anyOf [binary, null], which invites clients to send the text "null"."""
    components = schema.get("components", {}).get("schemas", {})
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            form = content.get("multipart/form-data", {}).get("schema", {})
            ref = form.get("$ref", "")
            target = components.get(ref.rsplit("/", 1)[-1]) if ref else form
            for prop in (target or {}).get("properties", {}).values():
                options = prop.get("anyOf")
                if options and any(o.get("type") == "null" for o in options):
                    rest = [o for o in options if o.get("type") != "null"]
                    prop.pop("anyOf")
                    if len(rest) == 1:
                        prop.update(rest[0])
                    else:
                        prop["anyOf"] = rest
                    if prop.get("default", "x") is None:
                        prop.pop("default")


def complete_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error answers each API operation can give (see the module docstring)."""
    _multipart_without_null(schema)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Error", ERROR_SCHEMA)
    ref = {"$ref": "#/components/schemas/Error"}
    for path, item in schema.get("paths", {}).items():
        if not path.startswith(API):
            continue
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete", "head", "options"):
                continue
            responses = operation.setdefault("responses", {})
            for code in _statuses(path, method, operation):
                entry = responses.setdefault(code, {"description": DESCRIPTIONS[code]})
                entry.setdefault("description", DESCRIPTIONS[code])
                if code == "422" and "content" in entry:
                    # FastAPI's HTTPValidationError, or our {"detail": "..."} from services
                    schema_ = entry["content"].get("application/json", {}).get("schema")
                    if schema_ is not None and schema_ != ref:
                        entry["content"]["application/json"]["schema"] = {"anyOf": [schema_, ref]}
                    continue
                entry.setdefault("content", {"application/json": {"schema": ref}})
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = complete_error_responses(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
