"""`sage-studio serve` in embedded mode starts web + a worker per queue + beat, and SIGTERM or
Ctrl-C (SIGINT) stops all of them: no orphan process survives."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.worker.conftest import ROOT, wait_for

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        current = stack.pop()
        children: list[str] = []
        # Per thread: a child restarted by the supervisor's watcher thread is listed under it.
        for task in Path(f"/proc/{current}/task").glob("*") if Path(f"/proc/{current}").exists() else []:
            with contextlib.suppress(FileNotFoundError):
                children += (task / "children").read_text().split()
        for child in map(int, children):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdlines(pids: set[int]) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_everything_and_stops_everything(tmp_path, sqlite_template, stop_signal):
    db = tmp_path / "sage.db"
    shutil.copy(sqlite_template, db)
    port = _free_port()
    env = dict(os.environ)
    env.update(
        SAGE_ENV="test",
        SAGE_DATA_DIR=str(tmp_path / "data"),
        SAGE_DATABASE_URL=f"sqlite:///{db}",
        SAGE_BROKER_URL="",
        SAGE_SECRET_KEY="test-secret-key",
        SAGE_SHUTDOWN_GRACE_S="5",
        PYTHONPATH=str(ROOT),
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "worker", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    children: set[int] = set()
    try:
        wait_for(lambda: _healthy(port) or serve.poll() is not None, 60, "the web server")
        assert serve.poll() is None, log.read_text()
        # web (this process) + worker[train] + worker[predict] + beat, each worker with its pool.
        wait_for(lambda: len(_descendants(serve.pid)) >= 4, 60, "the children")
        wait_for(lambda: log.read_text(errors="replace").count("ready.") >= 2, 60, "both workers ready")
        children = _descendants(serve.pid)
        lines = " | ".join(_cmdlines(children))
        assert "--queues train" in lines and "--queues predict" in lines and " beat" in lines, lines

        serve.send_signal(stop_signal)
        serve.wait(timeout=30)
        wait_for(lambda: not any(_alive(pid) for pid in children), 15, f"children {children} to exit")
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in children:  # only after a failure: never leave them running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.2)
        return False
