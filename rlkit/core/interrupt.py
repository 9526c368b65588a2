"""Clean stops: Ctrl-C or SIGTERM stops within seconds, saves, and exits non-zero.

The first signal only sets a flag; each stage checks `stop_requested()` after
its optimizer step (session.end_step: it saves that step) and after each
micro-batch or phase inside a step (session.stop_mid_step: it drops the step
in progress and saves the last finished one), then raises Interrupted, which
the CLI turns into the exact command that resumes the run. A second Ctrl-C exits at
once (KeyboardInterrupt); checkpoints are written atomically, so nothing saved
is damaged. Under torchrun the ranks agree on the flag (one tiny all-reduce a
check), so they all stop at the same step.
"""
from __future__ import annotations

import signal

from rlkit.core.dist import all_reduce_max
from rlkit.core.errors import RlkitError

_state = {"stop": False, "installed": False}


class Interrupted(RlkitError):
    """The run stopped on request after saving a checkpoint."""


def install() -> None:
    """Catch SIGINT and SIGTERM for the rest of the run (main thread only)."""

    def on_signal(signum, frame):
        if _state["stop"]:  # the second one: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        _state["stop"] = True
        print(f"\nrlkit: {signal.Signals(signum).name} received: stopping after this pass or step and "
              "saving (press Ctrl-C again to quit at once)", flush=True)

    _state["stop"] = False
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    _state["installed"] = True


def uninstall() -> None:
    if _state["installed"]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _state["installed"] = False


def stop_requested(device=None) -> bool:
    """True once a stop signal arrived on any rank."""
    return all_reduce_max(_state["stop"], device, bool)

