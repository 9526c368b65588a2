"""A reusable child process that runs one function under a hard wall clock per call.

    worker = Worker(grade)              # grade: any function of picklable arguments
    worker.call(("72", "#### 72"), 5.0) # -> Call(ok=True, value=1.0); a call past 5 s -> Call(timed_out=True)

The child is forked on the first call and then serves call after call over a pipe, so a call costs a
round trip, not a fork. A call that runs past its deadline is ended for sure: the child is killed
(SIGKILL, which no Python code can catch or outlive) and the next call forks a fresh one. Signal-based
time limits inside the function are not needed (and Python refuses them off the main thread); the
child runs it on its own main thread. Anything the parent is interrupted by while it waits (Ctrl-C, a
stage's own time limit) also kills the child, so an answer left in the pipe can never reach the next
call. A worker forked by another process (a data loader, say) starts its own child.

Forking copies the parent's imported modules, so import what the function needs before the first
call: each fresh child then starts at once. The child ignores SIGINT: Ctrl-C is the parent's to handle.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass


@dataclass
class Call:
    ok: bool  # the function returned `value`
    value: object = None
    timed_out: bool = False  # ran past its deadline: the child was killed
    error: str = ""  # what it raised, or how the child died


class Worker:
    """One child process calling `fn` on the arguments each `call` sends, killed when a call passes its deadline."""

    def __init__(self, fn):
        self.fn = fn
        self.process = self.conn = None
        self.owner = None  # the pid that forked the child
        self.forks = 0  # children started so far

    def call(self, args: tuple, timeout: float) -> Call:
        """fn(*args) in the child, waiting at most `timeout` seconds for its answer."""
        self._ensure()
        try:
            self.conn.send(args)
            if not self.conn.poll(timeout):
                self.close()
                return Call(ok=False, timed_out=True, error=f"no answer within {timeout:g}s")
            ok, value = self.conn.recv()
        except (EOFError, OSError) as e:  # the child died (a crash, out of memory): the next call forks anew
            self.close()
            return Call(ok=False, error=f"the worker process died ({type(e).__name__})")
        except BaseException:
            self.close()
            raise
        return Call(ok=True, value=value) if ok else Call(ok=False, error=value)

    def close(self) -> None:
        """Kill the child (if any); the next call forks a fresh one."""
        if self.process is not None and self.owner == os.getpid():
            self.process.kill()
            self.process.join()
            self.conn.close()
        self.process = self.conn = None

    def _ensure(self) -> None:
        if self.process is not None and self.owner == os.getpid() and self.process.is_alive():
            return
        if self.owner == os.getpid():
            self.close()
        context = multiprocessing.get_context("fork")
        parent, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(self.fn, child), daemon=True)
        self.process.start()
        child.close()
        self.conn, self.owner = parent, os.getpid()
        self.forks += 1


def _serve(fn, conn) -> None:
    """The child's loop: receive arguments, answer (True, value) or (False, "Error: message")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        try:
            conn.send((True, fn(*args)))
        except Exception as e:  # the parent decides what a failure means
            conn.send((False, f"{type(e).__name__}: {e}"))
