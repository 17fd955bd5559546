"""The embedded (file-system) broker's consumer side, made safe against half-written messages.

kombu's `filesystem://` transport (5.7) creates a message file, then locks it and writes the
payload; its consumer renames and reads any file it lists without taking the lock. A consumer
polling every 50 ms regularly catches a file between creation and write, reads an empty or partial
payload, fails to decode it and the message is lost (seen here as predict requests that never got
an answer and project predictions that never ran). This consumer takes the producer's lock without
blocking (skipping files still being written or empty), and claims a message by removing its file
(only one consumer's unlink succeeds, so two workers on one queue never both run it).

Installed in worker processes only (`install()`, called by worker.celery_app); producers are
unchanged, so the web process needs nothing.
"""

from __future__ import annotations

import fcntl
import os

from kombu import transport as kombu_transport
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads


class Channel(filesystem.Channel):
    def _get(self, queue):
        queue_find = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != queue_find:
                continue
            path = os.path.join(self.data_folder_in, filename)
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed below, after the unlink
            except FileNotFoundError:
                continue  # taken by another consumer
            with f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # the producer is still writing it (or another consumer holds it)
                payload = f.read()
                if not payload:
                    continue  # created, not yet locked and written by the producer
                try:
                    os.remove(path)  # the claim: exactly one consumer's unlink succeeds
                except FileNotFoundError:
                    continue
            return loads(bytes_to_str(payload))
        raise filesystem.Empty()


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make `filesystem://` resolve to this transport in the current process."""
    kombu_transport.TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
    kombu_transport._transport_cache.pop("filesystem", None)
