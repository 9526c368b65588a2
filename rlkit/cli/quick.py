"""Short-lived commands (check, plugins, reward): they end within seconds and keep most of what they build.

    with quick.short_lived(), user_errors():   # a short-lived command's body
        ...
    with quick.ending():                         # main(), around every command
        run_app(app)

While one runs, the cyclic garbage collector is off: each collection walks every live object, torch's hundreds
of thousands included, while the command builds a task's rows and configs. Then, once the atexit functions
have run, the process ends with os._exit, skipping the interpreter's teardown, which frees torch's modules one
by one. Together these were a third of `rlkit check` (docs/performance.md). A command run in-process (tests)
gets the collector back and no exit: only main() ends the process.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys

_ran = {"short_lived": False}


@contextlib.contextmanager
def short_lived():
    """Run the command's body without cyclic garbage collection; main() then ends the process at once."""
    _ran["short_lived"] = True
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def ending():
    """As the command's SystemExit passes: after a short-lived command, run the atexit functions, flush what it
    printed and end the process with its status (the code: an int, None for 0, else 1), skipping only the
    modules' teardown. After any other command, the interpreter tears down as usual."""
    try:
        yield
    except SystemExit as done:
        if _ran["short_lived"]:
            atexit._run_exitfuncs()  # what plugins registered still runs (CPython's own exit step; costs nothing here)
            with contextlib.suppress(OSError):  # a reader that went away (| head) is no error here
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(done.code if isinstance(done.code, int) else 0 if done.code is None else 1)
        raise
