"""The embedded broker's consumer (worker.embedded_broker) against kombu's file-system producer:
with two consumers polling while a producer writes, every message arrives exactly once. kombu's own
consumer loses messages here (it can read a file the producer has created but not yet written)."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from kombu import Connection

N = 600


def _options(folder: str) -> dict:
    return {
        "data_folder_in": folder,
        "data_folder_out": folder,
        "processed_folder": folder,
        "control_folder": folder,  # kombu's default is ./control in the working directory
        "store_processed": False,
        "polling_interval": 0.001,
    }


def _consume(folder: str, results, done) -> None:
    from worker import embedded_broker

    embedded_broker.install()
    got, errors = [], 0
    with Connection("filesystem://", transport_options=_options(folder)) as conn:
        queue = conn.SimpleQueue("q")
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                if done.is_set():
                    break
                continue
            except Exception:  # noqa: BLE001 - an undecodable (half-written) message
                errors += 1
                continue
            got.append(message.payload["i"])
            message.ack()
    results.put((got, errors))


@pytest.mark.slow
def test_every_message_is_delivered_exactly_once(tmp_path):
    ctx = mp.get_context("spawn")
    results, done = ctx.Queue(), ctx.Event()
    consumers = [ctx.Process(target=_consume, args=(str(tmp_path), results, done)) for _ in range(2)]
    for c in consumers:
        c.start()
    time.sleep(1.0)  # both consumers polling before the first message
    with Connection("filesystem://", transport_options=_options(str(tmp_path))) as conn:
        queue = conn.SimpleQueue("q")
        for i in range(N):
            queue.put({"i": i, "padding": "x" * 20_000})
    deadline = time.monotonic() + 60
    while any(p.name.endswith(".q.msg") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    done.set()
    outcomes = [results.get(timeout=30) for _ in consumers]
    for c in consumers:
        c.join(timeout=30)
    received = [i for got, _ in outcomes for i in got]
    assert sum(errors for _, errors in outcomes) == 0
    assert sorted(received) == list(range(N)), (
        f"{len(received)} received, {len(set(received))} distinct of {N}"
    )
