"""Per-process resources of a worker: settings, database engine, sessions and storage.

Created lazily and keyed by process id, so a prefork pool child never reuses the database
connections its parent opened before forking.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory
from app.settings import Settings


@dataclass
class WorkerContext:
    settings: Settings
    pid: int = field(default_factory=os.getpid)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def storage(self):
        from app.storage import get_storage

        return get_storage(self.settings)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session the caller commits; rolled back and closed on the way out."""
        session = self.session_factory()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


_contexts: dict[int, WorkerContext] = {}
_lock = threading.Lock()


def get_context(settings: Settings) -> WorkerContext:
    """The context of this process for `settings` (a fresh one after a fork)."""
    pid = os.getpid()
    with _lock:
        ctx = _contexts.get(pid)
        if ctx is None or ctx.settings is not settings:
            ctx = WorkerContext(settings)
            _contexts.clear()
            _contexts[pid] = ctx
        return ctx
