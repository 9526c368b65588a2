"""One child process under a wall clock: feed its stdin, collect its output with a cap, kill it at the deadline.

Safe to call from several threads at once: each call owns its pipes and its process, and a thread only
waits on its own child. Output past `keep_bytes` per stream is read and dropped, so a program printing
without end costs neither memory nor disk.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

CHUNK = 4096  # no more than PIPE_BUF: a write to a pipe select calls writable never blocks


@dataclass
class Command:
    argv: list[str]
    stdin: bytes
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> a pipe's (read, write) ends
    env: dict[str, str] | None = None
    cwd: str | None = None
    files: tuple[int, ...] = ()  # other descriptors the child inherits (and we close once it started)


@dataclass
class Finished:
    streams: dict[str, bytes]  # "stdout", "stderr" and each channel's name -> what was read (capped)
    returncode: int
    timed_out: bool
    truncated: bool


def execute(command: Command, timeout: float, keep_bytes: int) -> Finished:
    """Run `command` in a session of its own until its streams close or `timeout` seconds pass."""
    writes = [w for _, w in command.channels.values()] + list(command.files)
    try:
        proc = subprocess.Popen(command.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=writes, env=command.env, cwd=command.cwd, start_new_session=True)
    finally:
        for fd in writes:  # the child holds them now; ours would keep the pipes from ever closing
            os.close(fd)
    readers = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    readers.update({r: name for name, (r, _) in command.channels.items()})
    streams = {name: bytearray() for name in readers.values()}
    timed_out = truncated = True
    try:
        timed_out, truncated = pump(proc, readers, streams, command.stdin, (time.monotonic() + timeout, keep_bytes))
    finally:
        stop(proc, init_pid(streams.get("info", b"")))
        for r, _ in command.channels.values():
            os.close(r)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if not stream.closed:
                stream.close()
    return Finished({name: bytes(data) for name, data in streams.items()}, proc.returncode, timed_out, truncated)


def pump(proc, readers: dict[int, str], streams: dict[str, bytearray], data: bytes, until: tuple[float, int]):
    """Feed `data` to stdin and read every stream until all close or the deadline passes: (timed_out, truncated)."""
    deadline, keep_bytes = until
    truncated = False
    selector = selectors.DefaultSelector()
    for fd in readers:
        selector.register(fd, selectors.EVENT_READ)
    stdin = proc.stdin.fileno()
    selector.register(stdin, selectors.EVENT_WRITE)
    with selector:
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return True, truncated
            for key, _ in selector.select(left):
                if key.fd == stdin:
                    try:
                        data = data[os.write(stdin, data[:CHUNK]):]
                    except BrokenPipeError:  # it stopped reading (or never started): nothing more to say
                        data = b""
                    if not data:
                        selector.unregister(stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                stream = streams[readers[key.fd]]
                room = keep_bytes - len(stream)
                stream += chunk[:max(0, room)]
                truncated = truncated or len(chunk) > room
    return False, truncated


def init_pid(info: bytes) -> int | None:
    """The PID namespace's init, from bwrap's --info-fd JSON (None when there is none: the weak mode)."""
    try:
        return int(json.loads(info.decode())["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def stop(proc: subprocess.Popen, init: int | None) -> None:
    """Kill whatever is left, then reap: the namespace's init first (all in it die), then the session.

    The init's exit waits for every process of its namespace to die, and bwrap exits only once it has
    reaped the init: when bwrap is reaped, nothing of the program is left.
    """
    if init and kill_init(init, proc.pid):
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
    if proc.returncode is None:  # not reaped, so the number is still its session's
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def kill_init(init: int, bwrap: int) -> bool:
    """SIGKILL the namespace's init (by pidfd, so no other process); False if it was already gone."""
    try:
        pidfd = os.pidfd_open(init)
    except ProcessLookupError:
        return False
    try:
        if parent_pid(init) != bwrap:  # no longer bwrap's child: a stranger reusing the number
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    finally:
        os.close(pidfd)


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
    except (OSError, StopIteration, ValueError):
        return None
