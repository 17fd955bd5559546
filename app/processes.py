"""Process management for `sage-studio serve`: the web server and its supervised children.

`serve` in embedded mode (or with SAGE_SERVE_WORKERS=1) starts the web server plus one Celery
worker per queue and beat as child processes, restarts a child that dies, and stops them all on
Ctrl-C or SIGTERM. Children run in sessions of their own (a terminal's Ctrl-C reaches only the
parent, which stops them in order) and get SIGTERM from the kernel if the parent dies without
cleaning up (Linux PR_SET_PDEATHSIG), so no orphan survives even a SIGKILL of the parent.

The web process never imports worker/ nor torch (import-linter contracts in pyproject.toml):
workers are separate processes, started as `python -m worker worker ...` command lines. How a
worker and beat start (pools, CUDA, niceness) is worker/start.py; `Supervisor` and `child_env` here
are reused by it for `sage-studio worker` with several queues.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from app.queue import PREDICT_QUEUE, TRAIN_QUEUE
from app.settings import Settings

log = logging.getLogger("sage.processes")

QUEUES = (TRAIN_QUEUE, PREDICT_QUEUE)


class Stop(Exception):  # a control-flow signal, not an error
    """SIGTERM / SIGINT received: stop the children, then exit."""


def _raise_stop(signum, _frame) -> None:
    raise Stop(signal.Signals(signum).name)


def child_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings as this process."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None or isinstance(value, dict | list):
            continue
        env[f"SAGE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["SAGE_DATA_DIR"] = str(settings.resolved_data_dir)
    env["SAGE_DATABASE_URL"] = settings.resolved_database_url
    env["SAGE_BROKER_URL"] = settings.resolved_broker_url
    env["SAGE_RESULT_BACKEND"] = settings.resolved_result_backend
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.started_at = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent)  # noqa: PLW1509
        self.started_at = time.monotonic()
        log.info("started %s (pid %s)", self.name, self.proc.pid)

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)


class Supervisor:
    """Starts children, restarts those that die (with back-off), stops all of them together."""

    def __init__(self, children: list[Child], grace_s: float) -> None:
        self.children = children
        self.grace_s = grace_s
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        for child in self.children:
            child.start()
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for child in self.children:
                if child.proc is None or child.proc.poll() is None or self._stopping.is_set():
                    continue
                code = child.proc.returncode
                # A child that keeps dying right after start is restarted ever more slowly.
                if time.monotonic() - child.started_at < 30:
                    child.restarts += 1
                else:
                    child.restarts = 0
                delay = min(30.0, 0.5 * 2**child.restarts)
                log.error("%s exited with %s; restarting in %.1f s", child.name, code, delay)
                if self._stopping.wait(delay):
                    return
                child.start()

    def wait(self) -> None:
        """Block until stopped (the children are restarted meanwhile)."""
        while not self._stopping.wait(1.0):
            pass

    def stop(self) -> None:
        """SIGTERM every child's process group, wait `grace_s`, then SIGKILL what is left.

        A training run interrupted this way keeps its row `running` until its heartbeat goes stale;
        the reaper then re-queues it (attempts permitting)."""
        self._stopping.set()
        for child in self.children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killing it", child.name, self.grace_s)
        for child in self.children:
            child.signal_group(signal.SIGKILL)  # also any pool process its parent left behind
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=5)


def _cli(*args: str) -> list[str]:
    """A `sage-studio` command line run by this interpreter (the worker package is the entry point
    that knows every command; this module starts it as a process and never imports it)."""
    return [sys.executable, "-m", "worker", *args]


def apply_gpus(settings: Settings, gpus: str) -> Settings:
    """`--gpus 0` / `--gpus 0,1`: the worker sees only these GPUs (CUDA_VISIBLE_DEVICES, set before
    torch loads, inherited by its run processes) and trains each run on all of them (one DDP rank
    per GPU). Returns the settings with `train_processes` set."""
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {gpus!r}: give distinct GPU indices, e.g. 0 or 0,1")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    os.environ["SAGE_TRAIN_PROCESSES"] = str(len(ids))
    return settings.model_copy(update={"train_processes": len(ids)})


def worker_children(settings: Settings, queues: list[str], concurrency: int = 1) -> list[Child]:
    env = child_env(settings)
    return [
        Child(f"worker[{q}]", _cli("worker", "--queues", q, "--concurrency", str(concurrency)), env)
        for q in queues
    ]


def install_stop_handlers() -> None:
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)


def serve(settings: Settings, host: str, port: int, *, web_only: bool = False) -> int:
    """The web server; with a worker per queue and beat as supervised children in embedded mode
    (or when SAGE_SERVE_WORKERS=1), never with `web_only` (`sage-studio serve --web-only`)."""
    import uvicorn

    from app.main import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with_workers = (
        settings.serve_workers if settings.serve_workers is not None else settings.is_embedded_broker
    ) and not web_only
    supervisor = None
    if with_workers:
        children = worker_children(settings, list(QUEUES))
        children.append(Child("beat", _cli("beat"), child_env(settings)))
        supervisor = Supervisor(children, settings.shutdown_grace_s)
    # uvicorn restores these handlers after its graceful shutdown and re-raises the signal it got,
    # which then raises Stop here, so the children are always stopped.
    install_stop_handlers()
    try:
        if supervisor is not None:
            supervisor.start()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="info"))
        server.run()
    except (Stop, KeyboardInterrupt):
        pass
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0
