"""The FastAPI application factory."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from app import pages
from app.api import annotations, auth, images, jobs, models, predictions, projects, reading, tokens, training
from app.db import check_ready, make_engine, make_session_factory
from app.metrics import install_metrics
from app.queue import check_broker, make_celery
from app.schemas import API
from app.settings import Settings, get_settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


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
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.celery = make_celery(settings, name="sage-studio-web")
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)

    install_metrics(app)

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

    for module in (auth, tokens, projects, images, annotations, reading, training, models, predictions, jobs):
        app.include_router(module.router, prefix=API)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
