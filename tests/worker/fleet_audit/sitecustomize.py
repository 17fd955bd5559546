"""File-access audit for the fleet test, loaded at start-up by every process the test starts
(this folder is on their PYTHONPATH; pool processes inherit it through fork).

With SAGE_AUDIT_ROOT and SAGE_AUDIT_LOG set, a Python audit hook sees every file opened or listed
(`open`, `os.listdir`, `os.scandir`, ...). An access under SAGE_AUDIT_ROOT (the folder holding every
process's data folder) outside this process's own SAGE_DATA_DIR is written to SAGE_AUDIT_LOG as
`FOREIGN <event> <path>`; the first access inside its own folder is written as `OWN <path>`, which
shows the hook was live in that process."""

import os
import sys
import threading

_root = os.environ.get("SAGE_AUDIT_ROOT")
_log = os.environ.get("SAGE_AUDIT_LOG")
_own = os.environ.get("SAGE_DATA_DIR")

if _root and _log and _own:
    _root = os.path.realpath(_root) + os.sep
    _own = os.path.realpath(_own) + os.sep
    _local = threading.local()
    _seen_own = []
    _events = {"open", "os.listdir", "os.scandir", "os.rename", "os.remove", "shutil.copyfile", "os.mkdir"}

    def _write(line: str) -> None:
        fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {line}\n".encode())
        finally:
            os.close(fd)

    def _hook(event, args):
        if event not in _events or getattr(_local, "busy", False) or not args:
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        _local.busy = True
        try:
            path = os.path.abspath(os.fsdecode(path))
            if not (path + os.sep).startswith(_root):
                return
            if (path + os.sep).startswith(_own):
                if not _seen_own:
                    _seen_own.append(path)
                    _write(f"OWN {path}")
                return
            _write(f"FOREIGN {event} {path}")
        except Exception:  # noqa: BLE001 - auditing must never break the process
            pass
        finally:
            _local.busy = False

    sys.addaudithook(_hook)
