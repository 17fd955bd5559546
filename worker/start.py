"""How `sage-studio worker` and `sage-studio beat` start (the worker side of process start-up).

A training worker uses the prefork pool with one process that is replaced after every run, so CUDA
is initialised only in that short-lived child, never in a process that forks. The predict worker
runs a thread pool in its own process: concurrent requests are batched into one forward pass of a
model that stays loaded. Several queues given at once are served by one child process each under
app.processes' supervisor.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.processes import QUEUES, Stop, Supervisor, install_stop_handlers, worker_children
from app.queue import TRAIN_QUEUE
from app.settings import Settings


def _check_queues(queues: list[str]) -> list[str]:
    queues = [q.strip() for q in queues if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise SystemExit(
            f"sage-studio worker: unknown queue(s) {unknown or queues}; choose from {', '.join(QUEUES)}"
        )
    return list(dict.fromkeys(queues))


def run_worker(settings: Settings, queues: list[str], concurrency: int = 1) -> int:
    """One Celery worker per queue: the queues have different pools, so several queues given at
    once are served by one child process each under a supervisor."""
    queues = _check_queues(queues)
    if len(queues) > 1:
        supervisor = Supervisor(worker_children(settings, queues, concurrency), settings.shutdown_grace_s)
        install_stop_handlers()
        try:
            supervisor.start()
            supervisor.wait()
        except (Stop, KeyboardInterrupt):
            pass
        finally:
            supervisor.stop()
        return 0
    return _run_single_worker(settings, queues[0], concurrency)


def worker_argv(settings: Settings, queue: str, concurrency: int) -> list[str]:
    argv = [
        "worker",
        "--queues",
        queue,
        "--hostname",
        f"{queue}-{os.getpid()}@%h",
        "--loglevel",
        os.environ.get("SAGE_LOG_LEVEL", "INFO"),
        "--without-gossip",
        "--without-mingle",
    ]
    if queue == TRAIN_QUEUE:
        # A fresh pool process per run: CUDA lives only in that child; nothing leaks between runs.
        # Prefork (worker.pool, set as the app's `worker_pool`: the command line takes aliases only).
        argv += ["--concurrency", str(max(1, concurrency)), "--max-tasks-per-child", "1"]
    else:
        argv += ["--pool", "threads", "--concurrency", str(max(concurrency, settings.predict_concurrency))]
    return argv


def _run_single_worker(settings: Settings, queue: str, concurrency: int) -> int:
    if settings.torch_threads:
        # Before torch is imported, so this process and its pool processes start with it.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(settings.torch_threads)
    if queue == TRAIN_QUEUE:
        if settings.train_nice:
            os.nice(settings.train_nice)  # inherited by the pool processes that train
        # Import torch and the training code once in the parent (this does not touch CUDA), so
        # each forked run starts in milliseconds instead of re-importing for seconds.
        import sage.training
        import worker.train_job  # noqa: F401
    else:
        import sage.inference  # noqa: F401

    from worker.celery_app import create_worker_app

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    celery = create_worker_app(settings)
    if queue == TRAIN_QUEUE:
        from worker.pool import POOL

        celery.conf.worker_pool = POOL
    celery.worker_main(worker_argv(settings, queue, concurrency))
    return 0


def run_beat(settings: Settings) -> int:
    from worker.celery_app import create_worker_app

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    celery = create_worker_app(settings)
    schedule = Path(celery.conf.beat_schedule_filename)
    celery.start(
        ["beat", "--schedule", str(schedule), "--loglevel", os.environ.get("SAGE_LOG_LEVEL", "INFO")]
    )
    return 0
