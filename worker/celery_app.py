"""The worker's Celery application: the shared configuration from app.queue, the tasks, the beat
schedule. `celery -A worker.celery_app worker` works too (settings from SAGE_* variables), but
`sage-studio worker|beat` (worker/__main__.py, worker/start.py) is the supported way to start one."""

from __future__ import annotations

from celery import Celery

from app.queue import make_celery
from app.settings import Settings, get_settings
from worker import embedded_broker
from worker.scheduler import beat_schedule
from worker.tasks import register_tasks


def create_worker_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = make_celery(settings, name="sage-studio-worker")
    celery.conf.beat_schedule = beat_schedule(settings)
    celery.conf.beat_schedule_filename = str(settings.resolved_data_dir / "celerybeat-schedule")
    if settings.is_embedded_broker:
        embedded_broker.install()
        # The file-system transport keeps its broadcast exchange table in a relative folder by
        # default (the working directory): keep it with the broker. Remote control (celery
        # inspect) needs a server broker; the embedded mode has one worker per queue anyway.
        options = dict(celery.conf.broker_transport_options)
        options["control_folder"] = str(settings.broker_folder / "control")
        celery.conf.broker_transport_options = options
        celery.conf.worker_enable_remote_control = False
    celery.sage_settings = settings  # read by worker.tasks to build the process's WorkerContext
    register_tasks(celery)
    return celery


def __getattr__(name: str) -> Celery:
    # `celery -A worker.celery_app` looks up `app` or `celery`; build it only when asked.
    if name in ("app", "celery"):
        globals()[name] = create_worker_app()
        return globals()[name]
    raise AttributeError(name)
