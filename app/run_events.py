"""One shared poller per web process for training-run event streams (SSE).

Without it every open stream queried the database four times a second; with it one query every
`interval_s` (only while someone listens) finds which runs got new events, and only those
runs' streams read their events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
from sqlalchemy import func, select

from app.tables import TrainingEvent

log = logging.getLogger(__name__)


class RunEventHub:
    """Streams `await hub.wait(run_id, timeout)`; a single task polls `training_events` for rows
    newer than the last one it saw and wakes the streams of those runs."""

    def __init__(self, session_factory, interval_s: float = 0.5) -> None:
        self.session_factory = session_factory
        self.interval_s = interval_s
        self.polls = 0  # database polls made (tests and /metrics read it)
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._last_id: int | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _latest(self, after_id: int | None) -> tuple[int | None, set[int]]:
        with self.session_factory() as s:
            if after_id is None:
                return s.scalar(select(func.max(TrainingEvent.id))) or 0, set()
            rows = s.execute(
                select(TrainingEvent.run_id, func.max(TrainingEvent.id))
                .where(TrainingEvent.id > after_id)
                .group_by(TrainingEvent.run_id)
            ).all()
        if not rows:
            return after_id, set()
        return max(m for _, m in rows), {run_id for run_id, _ in rows}

    async def _poll(self) -> None:
        while self._waiters:
            try:
                self._last_id, runs = await anyio.to_thread.run_sync(self._latest, self._last_id)
                self.polls += 1
            except Exception:
                log.warning("run event poll failed", exc_info=True)
                runs = set()
            for run_id in runs:
                for event in self._waiters.get(run_id, ()):
                    event.set()
            await asyncio.sleep(self.interval_s)
        self._task = None

    async def wait(self, run_id: int, timeout_s: float) -> None:
        """Return when the run may have new events, or after `timeout_s`."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): start over
            self._loop, self._task, self._waiters, self._last_id = loop, None, {}, None
        event = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(event)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            waiters = self._waiters.get(run_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    self._waiters.pop(run_id, None)
