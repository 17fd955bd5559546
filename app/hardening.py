"""Process-wide guards as pure ASGI middleware: request-body limits enforced while the body streams
(before any route, dependency or authentication runs), security headers on every response, and a
bound on concurrent heavy renders.

Pure ASGI (not `@app.middleware("http")`) so a body is never buffered to be measured and a
streamed response is never wrapped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

# Pages and API docs load scripts only from this origin; the painter draws on canvases (blob:,
# data: images); inline style attributes are allowed, inline script is not.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)


class SecurityHeadersMiddleware:
    """Adds CSP (no inline script, frame-ancestors 'none'), nosniff, Referrer-Policy and friends to
    every HTTP response, and HSTS when the request came over HTTPS. Headers a route set win."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if https and b"strict-transport-security" not in present:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(Exception):
    """Raised from `receive` when a request body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def _json_response(status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None):
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra or []

    async def respond(send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return respond


def body_limit_for(scope: Scope, settings: Settings) -> int:
    """The byte limit of this request's body.

    - no credentials at all (no Authorization header, no session cookie): `max_anonymous_body_bytes`
      (the sign-in form fits; nobody can make the server spool uploads before signing in);
    - multipart bodies to the batch upload and the dataset import: `max_import_bytes`;
    - other multipart bodies: one file (`max_upload_bytes`) plus form overhead;
    - everything else (JSON, url-encoded forms): `max_json_bytes`.
    """
    headers = Headers(scope=scope)
    has_credentials = bool(headers.get("authorization")) or settings.session_cookie in headers.get(
        "cookie", ""
    )
    if not has_credentials:
        return settings.max_anonymous_body_bytes
    content_type = headers.get("content-type", "").lower()
    if content_type.startswith("multipart/"):
        path = scope.get("path", "")
        if path.endswith("/images") or path.endswith("/import"):
            return settings.max_import_bytes
        return settings.max_upload_bytes + 1024 * 1024
    return settings.max_json_bytes


class BodyLimitMiddleware:
    """Refuses request bodies over `body_limit_for` with 413 JSON: at once from Content-Length, else
    while the body streams (chunked uploads without Content-Length included), counting every byte
    `receive` hands on, before the route, its dependencies or authentication run."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit_for(scope, self.settings)
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not length.isdigit():
                await _json_response(400, "Content-Length is not a number")(send)
                return
            if int(length) > limit:
                await self._too_large(send, limit)
                return
        received = 0
        exceeded = False
        answered = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            # A route or FastAPI's body parser may turn our exception into its own answer (400);
            # the client gets the 413 instead, and nothing of the other answer.
            nonlocal answered
            if exceeded:
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    await self._too_large(send, limit)
                return
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
            if not answered:  # the body limit ended the request: answer 413 once, log nothing
                answered = True
                await self._too_large(send, limit)

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        await _json_response(
            413,
            f"the request body is over the limit of {limit:,} bytes; send less at once "
            "(split a batch upload, or sign in first)",
            [(b"connection", b"close")],
        )(send)


class RenderLimiter:
    """Bounds how many heavy renders (overlays, consensus maps, synchronous predicts) run at once in
    this process. A request waits up to `wait_s` for a slot, then gets 503 with Retry-After, so a
    burst of viewers queues briefly instead of exhausting memory or the thread pool."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._semaphores: dict[int, asyncio.Semaphore] = {}
        self.rejected = 0

    async def _acquire(self, sem: asyncio.Semaphore) -> bool:
        if self.wait_s <= 0:
            if sem.locked():
                return False
            await sem.acquire()
            return True
        try:
            await asyncio.wait_for(sem.acquire(), timeout=self.wait_s)
        except TimeoutError:
            return False
        return True

    def _sem(self) -> asyncio.Semaphore:
        # One per event loop (a server has one; tests may start several over an app's life).
        loop = id(asyncio.get_running_loop())
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.slots)
        return self._semaphores[loop]

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run `func(*args)` in a worker thread once a slot is free (HTTPException 503 otherwise)."""
        from fastapi import HTTPException
        from starlette.concurrency import run_in_threadpool

        sem = self._sem()
        if not await self._acquire(sem):
            self.rejected += 1
            raise HTTPException(
                503,
                detail="the server is busy rendering for other viewers; try again in a moment",
                headers={"Retry-After": "2"},
            ) from None
        try:
            return await run_in_threadpool(func, *args)
        finally:
            sem.release()

    async def hold(self, awaitable: Awaitable[Any]) -> Any:
        """Await `awaitable` while holding a slot (503 when none frees within `wait_s`)."""
        from fastapi import HTTPException

        sem = self._sem()
        if not await self._acquire(sem):
            if hasattr(awaitable, "close"):
                awaitable.close()  # never started: close it so it is not reported as never awaited
            self.rejected += 1
            raise HTTPException(
                503,
                detail="the server is busy with other requests of this kind; try again in a moment",
                headers={"Retry-After": "2"},
            ) from None
        try:
            return await awaitable
        finally:
            sem.release()


class AllowHeaderMiddleware:
    """405 answers list in `Allow` every method the OpenAPI schema documents for the path
    (Starlette lists only those of the first route whose path matched, though several routes
    share most paths)."""

    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._templates: list[tuple[Any, int, list[str]]] | None = None

    def _allowed(self, path: str) -> list[str]:
        import re

        if self._templates is None:
            templates = []
            for template, item in self.fastapi_app.openapi().get("paths", {}).items():
                pattern = re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$")
                methods = [m.upper() for m in item if m in _HTTP_METHODS]
                templates.append((pattern, template.count("{"), methods))
            self._templates = templates
        matches = [(params, allowed) for pattern, params, allowed in self._templates if pattern.match(path)]
        if not matches:
            return []
        fewest = min(params for params, _ in matches)  # a literal path wins over a template
        return sorted({m for params, allowed in matches if params == fewest for m in allowed})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allowed = self._allowed(scope.get("path", ""))
                if allowed:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                    headers.append((b"allow", ", ".join(allowed).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_allow)


_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
