"""Celery configuration shared by the web process (a thin client that sends jobs by name) and the workers.

The web process never imports `worker/`: it sends tasks by their registered names with `send_task`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.settings import Settings

TRAIN_QUEUE = "train"
PREDICT_QUEUE = "predict"
# Task names are the contract between app/ and worker/.
TASK_TRAIN = "sage.train_run"
TASK_PREDICT = "sage.predict"
TASK_PREDICT_PROJECT = "sage.predict_project"
TASK_REAP_STALE = "sage.reap_stale_runs"
TASK_RETRAIN_CHECK = "sage.retrain_check"
TASK_SWEEP_OBJECTS = "sage.sweep_objects"
TASK_EXPORT_MODEL = "sage.export_model"
TASK_PREDICT_BATCH = "sage.predict_batch"
TASK_SANITY_CHECK = "sage.sanity_check"
TASK_PREDICT_MISSING = "sage.predict_missing"
TASK_REALIGN = "sage.realign"
TASK_EXPIRE_RESULTS = "sage.expire_job_results"
TASK_ROUTES = {
    TASK_TRAIN: {"queue": TRAIN_QUEUE},
    TASK_PREDICT_PROJECT: {"queue": TRAIN_QUEUE},
    TASK_PREDICT: {"queue": PREDICT_QUEUE},
    TASK_REAP_STALE: {"queue": PREDICT_QUEUE},
    TASK_RETRAIN_CHECK: {"queue": PREDICT_QUEUE},
    TASK_SWEEP_OBJECTS: {"queue": PREDICT_QUEUE},
    TASK_EXPORT_MODEL: {"queue": PREDICT_QUEUE},
    TASK_PREDICT_BATCH: {"queue": TRAIN_QUEUE},
    TASK_SANITY_CHECK: {"queue": PREDICT_QUEUE},
    TASK_PREDICT_MISSING: {"queue": TRAIN_QUEUE},
    TASK_REALIGN: {"queue": PREDICT_QUEUE},
    TASK_EXPIRE_RESULTS: {"queue": PREDICT_QUEUE},
}


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.resolved_broker_url,
        "result_backend": settings.resolved_result_backend,
        "task_routes": TASK_ROUTES,
        "task_default_queue": PREDICT_QUEUE,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "broker_connection_retry_on_startup": True,
        "result_expires": 3600,
        "worker_hijack_root_logger": False,
    }
    if settings.is_embedded_broker:
        folder = settings.broker_folder
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            # One folder for in and out: producers and consumers share the same queue files.
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            # Exchange tables; the transport's default is ./control in the current directory.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.broker_polling_interval_s,
        }
    return conf


def make_celery(settings: Settings, name: str = "sage-studio") -> Celery:
    celery = Celery(name)
    celery.conf.update(celery_config(settings))
    return celery


def check_broker(celery: Celery) -> str | None:
    """None when the broker answers, else what is wrong."""
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - any transport error means "not ready"
        return f"broker unreachable: {exc.__class__.__name__}: {exc}"
    return None
