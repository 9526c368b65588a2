"""Running model-written Python programs contained by the operating system, one process tree per program.

    result = run("print(2 + 2)", Limits(timeout=5.0))      # result.stdout == "4\\n", result.passed
    results = run_many([code_a, code_b], Limits())        # concurrently, from threads

Each program runs as `python -I` in a bubblewrap sandbox (isolation.py): new mount, PID, network, IPC
and UTS namespaces; a read-only view of /usr and the Python installation; a private /tmp (tmpfs) as its
working directory; no environment; a uid of its own with no capabilities (when rlkit runs as root).
Inside, child.py sets hard rlimits before it drops its user: address space, CPU seconds, bytes per file
written (the tmpfs's size caps the total), processes, no core dumps. A wall clock kills the PID
namespace's init at `timeout`, which kills every process the program started; bwrap's
--die-with-parent does the same if rlkit itself dies. Nothing in Python is patched: the program gets
the whole standard library, and containment does not depend on which module reaches a system call.
On x86-64 a seccomp filter (seccomp.py) also refuses new namespaces, ptrace, mount, bpf and the like.

A host that cannot build this sandbox (no bwrap, namespaces refused) gets an RlkitError instead of a
run. `isolation="weak"` (a humaneval task's `sandbox: weak`) runs a plain `python -I` subprocess in a
temporary directory with the same rlimits, a cleared environment and the timeout: it does NOT contain
the program (it can read and write what rlkit's user can, reach the network and signal processes).

`passed` means the program ran to its last line and exited 0: `sys.exit(0)`, `os._exit(0)` or a kill
before the end do not count. The proof is a token that child.py writes after the program returns; a
program that searches its own interpreter's memory could find it, so this guards a reward against
accidents and the obvious shortcuts, not against a program built to fake a pass.
"""
from __future__ import annotations

import os
import random
import secrets
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.sandbox import seccomp
from rlkit.lib.evaluation.sandbox.isolation import bwrap_argv, bwrap_path, python_path, require_isolation
from rlkit.lib.evaluation.sandbox.process import Command, Finished, execute

CHILD = (Path(__file__).parent / "child.py").read_text()
ISOLATIONS = ("namespaces", "weak")
UIDS = range(1_900_000_000, 1_901_000_000)  # no user of the host owns these: each program gets one of its own
_uids_in_use: set[int] = set()
_uid_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0        # wall clock seconds, then every process of the program is killed
    memory_mb: int = 1024       # address space of each process
    cpu_s: int | None = None    # CPU seconds of each process (default: the timeout's whole seconds plus 2)
    disk_mb: int = 16           # the size of /tmp, and of any one file written
    processes: int = 16         # processes and threads the program's user may have at once
    output_bytes: int = 64_000  # of stdout and of stderr kept; the rest is read and dropped


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    returncode: int         # a program killed by signal N: 128 + N (as bwrap reports it), or -N (weak mode)
    timed_out: bool
    completed: bool         # the program's last line returned (its code did not exit or crash early)
    truncated: bool         # stdout or stderr was longer than Limits.output_bytes
    isolation: str          # "namespaces" or "weak"

    @property
    def passed(self) -> bool:
        """It ran to its end within the time and exited 0: what a test program's success means."""
        return self.completed and self.returncode == 0 and not self.timed_out


def run(code: str, limits: Limits = Limits(), isolation: str = "namespaces") -> Result:
    """Run one program in its own sandbox (see the module docstring) and return what it printed and how it ended."""
    if isolation not in ISOLATIONS:
        raise RlkitError(f"sandbox: isolation {isolation!r} is not one of {', '.join(ISOLATIONS)}")
    if isolation == "namespaces":
        require_isolation(bwrap_path())
    token = secrets.token_hex(16).encode()
    stdin = token + b"\n" + code.encode("utf-8", "replace")
    finished = run_weak(stdin, limits) if isolation == "weak" else run_contained(stdin, limits)
    streams = finished.streams
    return Result(streams["stdout"].decode("utf-8", "replace"), streams["stderr"].decode("utf-8", "replace"),
                  finished.returncode, finished.timed_out, streams["done"] == token, finished.truncated, isolation)


def run_contained(stdin: bytes, limits: Limits) -> Finished:
    """child.py in bwrap, with the seccomp filter where there is one, as a uid of its own when we are root."""
    done, info = os.pipe(), os.pipe()
    uid = take_uid() if os.geteuid() == 0 else -1
    rules = seccomp.filter_fd()
    try:
        argv = bwrap_argv(bwrap_path(), limits.disk_mb * 2**20, info[1])
        argv += ["--seccomp", str(rules)] if rules is not None else []
        argv += [python_path(), "-I", "-c", CHILD, *child_args(done[1], uid, limits)]
        # bwrap gets no environment either: its /proc/<pid>/environ is inside the namespace
        command = Command(argv, stdin, {"done": done, "info": info}, env={},
                          files=(rules,) if rules is not None else ())
        return execute(command, limits.timeout, limits.output_bytes)
    finally:
        release_uid(uid)


def run_weak(stdin: bytes, limits: Limits) -> Finished:
    """child.py as a plain subprocess in a temporary directory: rlimits and the timeout, no containment."""
    done = os.pipe()
    with tempfile.TemporaryDirectory(prefix="rlkit-sandbox-") as work:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        argv = [sys.executable, "-I", "-c", CHILD, *child_args(done[1], -1, limits)]
        return execute(Command(argv, stdin, {"done": done}, env=env, cwd=work), limits.timeout, limits.output_bytes)


def run_many(programs: list[str], limits: Limits = Limits(), isolation: str = "namespaces",
             workers: int | None = None) -> list[Result]:
    """Run every program in its own sandbox, up to `workers` (default: the cores) at once, results in order."""
    if isolation == "namespaces":
        require_isolation(bwrap_path())  # refuse once, here, rather than in every thread
    workers = max(1, min(workers or os.cpu_count() or 1, len(programs) or 1))
    with ThreadPoolExecutor(workers) as pool:  # the threads only wait on their children
        return list(pool.map(lambda code: run(code, limits, isolation), programs))


def child_args(done_fd: int, uid: int, limits: Limits) -> list[str]:
    """child.py's argv: where the token goes, the user to become (its group has the same number), the rlimits."""
    cpu_s = limits.cpu_s if limits.cpu_s is not None else int(limits.timeout) + 2
    values = (done_fd, uid, uid, limits.memory_mb * 2**20, cpu_s, limits.disk_mb * 2**20, limits.processes)
    return [str(v) for v in values]


def take_uid() -> int:
    """A uid no other program of this process is using (another process's pick is unlikely to clash)."""
    with _uid_lock:
        while (uid := random.choice(UIDS)) in _uids_in_use:
            pass
        _uids_in_use.add(uid)
        return uid


def release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)
