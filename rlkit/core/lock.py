"""One run folder, one process: an exclusive lock on runs/<name>/.lock for the life of a run.

The lock is an OS advisory lock (fcntl.flock) on a file inside the run folder, so the kernel releases it
whenever the holder exits, however it exits (a crash or kill -9 included): a stale lock cannot stop the
next run. The file also records who holds it (pid, host, start time), so a second run started with the
same name is refused with one line naming the holder. Under torchrun rank 0 holds it for all ranks.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from rlkit.core.errors import RlkitError
from rlkit.core.files import write_error

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only folder, say: the same line as any other write (files.writing)
            raise write_error(e, self.path) or RlkitError(f"run_dir: cannot create {self.path} ({e.strerror})") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RlkitError(f"run_dir: {self.path.parent} is in use by another rlkit run ({holder}); wait for it to "
                             f"finish, stop it, or start this one with name=<new name>") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
