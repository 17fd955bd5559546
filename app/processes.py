"""Process management for `sage-studio serve`, `worker` and `beat`.

`serve` in embedded mode starts the web server, one Celery worker per queue and beat together and
stops them together. The web process itself never imports worker/: workers are child processes.
"""

from __future__ import annotations

from app.settings import Settings


def serve(settings: Settings, host: str, port: int, web_only: bool = False) -> int:
    """Web server; unless web_only, also a worker per queue and beat (embedded mode default)."""
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0


def run_worker(settings: Settings, queues: list[str], concurrency: int = 1) -> int:
    raise SystemExit("sage-studio worker: not implemented yet")


def run_beat(settings: Settings) -> int:
    raise SystemExit("sage-studio beat: not implemented yet")
