"""The training worker's process pool: Celery's prefork pool, replacing a recycled process promptly.

Training processes are recycled after every run (`--max-tasks-per-child 1`). With an event-loop
broker (Redis), Celery's AsynPool sometimes notices the exit only on its maintenance timer, every
5 s, and a queued "train now" waits that long for the replacement process (celery/celery#9588;
measured here: 4-5 s between "received" and the task starting). Running the maintenance every
0.2 s bounds that wait; maintenance only walks the pool's few process handles.
"""

from __future__ import annotations

from celery.concurrency import asynpool, prefork

MAINTAIN_INTERVAL_S = 0.2


class RecyclingAsynPool(asynpool.AsynPool):
    @property
    def timers(self):
        return {self.maintain_pool: MAINTAIN_INTERVAL_S}


class TaskPool(prefork.TaskPool):
    Pool = RecyclingAsynPool


POOL = f"{__name__}:TaskPool"
