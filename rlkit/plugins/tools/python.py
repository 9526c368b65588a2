"""The `python` tool: runs the model's snippet in rlkit's sandbox and returns what it printed.

python(call) runs `call` as a program with rlkit.lib.evaluation.sandbox.run (its own process tree in a
bubblewrap sandbox: namespaces, rlimits, a wall clock; `isolation: weak` for a host without it, which does
NOT contain the program) and returns its stdout, cut to `max_chars` characters with a note when longer.
A program that fails returns "error: " and the last line of its stderr; one that runs out of time returns
"error: timed out after N s". A host that cannot build the sandbox gets that error text too: the tool
never raises into the run.
"""
from __future__ import annotations

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.sandbox import Limits, run


@rlkit.hookimpl
def rlkit_tools():
    return {"python": python}


def python(call: str, timeout: float = 5.0, max_chars: int = 1000, memory_mb: int = 512,
           isolation: str = "namespaces") -> str:
    """stdout of the program `call` (module docstring), or "error: ..."; never raises."""
    try:
        result = run(call, Limits(timeout=timeout, memory_mb=memory_mb, output_bytes=4 * max_chars), isolation)
    except RlkitError as e:
        return f"error: {str(e)[:200]}"
    if result.timed_out:
        return f"error: timed out after {timeout:g} s"
    if result.returncode != 0 or not result.completed:
        lines = result.stderr.strip().splitlines()
        return f"error: {lines[-1][:200] if lines else f'exit status {result.returncode}'}"
    out = result.stdout
    return out if len(out) <= max_chars else out[:max_chars] + f"... (cut at {max_chars} characters)"
