"""The FastAPI application factory."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app import pages
from app.api import (
    annotations,
    auth,
    images,
    jobs,
    model_versions,
    predictions,
    projects,
    reading,
    runs,
    tokens,
)
from app.db import check_ready, make_engine, make_session_factory
from app.hardening import (
    AllowHeaderMiddleware,
    BodyLimitMiddleware,
    PendingPredicts,
    RenderLimiter,
    SecurityHeadersMiddleware,
)
from app.openapi import install_openapi
from app.prometheus import install_metrics
from app.queue import check_broker, make_celery
from app.schemas import API
from app.settings import Settings, get_settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
</head><body>{body}</body></html>"""
_SWAGGER_BODY = (
    '<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">'
    '<div id="swagger-ui" data-openapi-url="/openapi.json"></div>'
    '<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>'
    '<script src="/static/js/docs-swagger.js"></script>'
)
_REDOC_BODY = (
    '<redoc spec-url="/openapi.json"></redoc><script src="/static/vendor/redoc/redoc.standalone.js"></script>'
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.dispose()

    app = FastAPI(
        title="SAGE Studio",
        version="0.1.0",
        description="Paint where a classifier should look; train it with SAGE.",
        lifespan=lifespan,
        docs_url=None,  # served below from vendored files (no CDN, no inline script)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.celery = make_celery(settings, name="sage-studio-web")
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)

    app.state.render_limiter = RenderLimiter(settings.render_slots, settings.render_wait_s)
    app.state.predict_limiter = RenderLimiter(settings.predict_max_waiting, 0.0)
    app.state.pending_predicts = PendingPredicts()
    install_metrics(app)
    # Added last = outermost: the body limit runs before metrics, routes and authentication.
    app.add_middleware(AllowHeaderMiddleware, fastapi_app=app)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware, settings=settings)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request):
        """The database answers and is migrated to head, and the broker answers."""
        problems = [p for p in (check_ready(engine), check_broker(request.app.state.celery)) if p]
        if problems:
            return JSONResponse({"status": "unavailable", "detail": problems}, status_code=503)
        return {"status": "ok"}

    @app.get("/docs", include_in_schema=False)
    def swagger_docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_PAGE.format(title="SAGE Studio API", body=_SWAGGER_BODY))

    @app.get("/redoc", include_in_schema=False)
    def redoc_docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_PAGE.format(title="SAGE Studio API", body=_REDOC_BODY))

    for module in (
        auth,
        tokens,
        projects,
        images,
        annotations,
        reading,
        runs,
        model_versions,
        predictions,
        jobs,
    ):
        app.include_router(module.router, prefix=API)
    app.include_router(pages.router)
    pages.install_error_pages(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_openapi(app)
    return app
