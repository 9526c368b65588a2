"""Scoring completions with reward plugins, guarded against faults in user code.

Every reward is called as `reward(completion, example)` (its YAML args already
bound). A reward that raises, returns something that is not a finite number,
or runs longer than `timeout` seconds on one completion stops the run with one
line naming the reward, the example and what happened; the caller's last
checkpoint stays as it was. A reward object with a `score_batch(completions, examples)` method is
called once for all of a batch's completions instead (its time limit is `timeout` per completion); it may
return a `Scored`, its values with per-completion figures to track beside them (a grader's timeouts, say):
they come back as `{"<reward>/<figure>": (N,) tensor}` entries that no weighted total reads.
"""
from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
from typing import TYPE_CHECKING

from rlkit.core.errors import RlkitError

if TYPE_CHECKING:
    import torch


class Scored(list):
    """A batch scorer's values, with `metrics`: {figure: [float] * N}, one value per completion, to track."""

    def __init__(self, values, metrics: dict | None = None):
        super().__init__(values)
        self.metrics = metrics or {}


class RewardTimeout(BaseException):
    """A BaseException, so a reward's own `except Exception` (a retry loop, say) cannot swallow it."""


def score(rewards, texts: list[str], examples: list, at: str, timeout: float = 10.0,
          timeout_key: str = "reward_timeout") -> dict[str, torch.Tensor]:
    """rewards: [(name, weight, fn)] -> {name: (N,) float tensor of each reward on each completion}.
    `at` says where in the run, e.g. "at rl step 3"; `timeout_key` is the config key that sets `timeout`."""
    import torch  # here, not at the top: the reward trials of `rlkit check` (trial.py) use this module without it

    out = {}
    for name, _, fn in rewards:
        batch = batch_scorer(fn)
        if batch is not None:  # one call for all completions (e.g. programs run in parallel)
            values = _score_batch(name, batch, texts, examples, at, timeout, timeout_key)
            out[name] = torch.tensor(list(values))
            out.update({f"{name}/{k}": torch.tensor(v, dtype=torch.float32) for k, v in values.metrics.items()})
            continue
        values = []
        for text, example in zip(texts, examples):
            where = f"reward '{name}' {at} on example {_question(example)!r}"
            value = _guarded(lambda: fn(text, example), timeout, where, f"{timeout:g}s", timeout_key, "raised")
            values.append(_finite(value, where))
        out[name] = torch.tensor(values)
    return out


def _guarded(call, seconds: float, where: str, limit: str, timeout_key: str, raised: str):
    """call() under the time limit; a timeout (even one the reward caught and carried on past) or an exception
    from user code becomes one RlkitError naming `where`."""
    try:
        with time_limit(seconds) as clock:
            value = call()
        if clock["fired"]:  # the reward caught even a BaseException and carried on: still too slow
            raise RewardTimeout()
    except RewardTimeout:
        raise RlkitError(f"{where}: took longer than {limit} ({timeout_key})") from None
    except RlkitError:
        raise
    except Exception as e:
        raise RlkitError(f"{where}: {raised} {type(e).__name__}: {e}") from e
    return value


def batch_scorer(fn):
    """`fn.score_batch` (its YAML args still bound), when the reward offers one; else None."""
    if isinstance(fn, functools.partial):
        inner = getattr(fn.func, "score_batch", None)
        return None if inner is None else functools.partial(inner, *fn.args, **fn.keywords)
    return getattr(fn, "score_batch", None)


def _score_batch(name, batch, texts, examples, at, timeout, timeout_key) -> Scored:
    where = f"reward '{name}' {at} on {len(texts)} completions"
    raw = _guarded(lambda: _as_scored(batch(texts, examples)), timeout * max(len(texts), 1), where,
                   f"{timeout:g}s a completion", timeout_key, "score_batch raised")
    values, metrics = list(raw), raw.metrics
    for what, got in [("values", len(values))] + [(f"{k!r} figures", len(v)) for k, v in metrics.items()]:
        if got != len(texts):
            raise RlkitError(f"{where}: score_batch returned {got} {what} for {len(texts)} completions")
    return Scored([_finite(v, f"reward '{name}' {at} on example {_question(e)!r}") for v, e in zip(values, examples)],
                  metrics)


def _as_scored(values) -> Scored:
    """What score_batch returned (a list, a generator, a Scored), read to the end inside the time limit."""
    return values if isinstance(values, Scored) else Scored(values)


def weighted_total(rewards, scores: dict[str, torch.Tensor], at: str) -> torch.Tensor:
    """sum of weight * reward over the rewards; a total that overflows is blamed on the rewards, by name."""
    total = sum(w * scores[name] for name, w, _ in rewards)
    if not total.isfinite().all():
        parts = ", ".join(f"{name} (x{w:g}, max |r| {scores[name].abs().max().item():.3g})" for name, w, _ in rewards)
        raise RlkitError(f"rewards {at}: their weighted sum overflows float32 ({parts}); scale the rewards or "
                         "their weights down")
    return total


F32_MAX = 3.4028234663852886e38  # float32's largest finite value, torch.finfo(torch.float32).max


def _finite(value, where: str) -> float:
    """A reward's value as a float that float32 holds, else one line saying what it returned."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RlkitError(f"{where}: returned {value!r}; a reward must return a finite float")
    try:
        x = float(value)
    except OverflowError:
        raise RlkitError(f"{where}: returned an integer too large for a float ({str(value)[:20]}...); a reward "
                         "must return a finite float") from None
    if not math.isfinite(x):
        raise RlkitError(f"{where}: returned {value!r}; a reward must return a finite float")
    if abs(x) > F32_MAX:
        raise RlkitError(f"{where}: returned {x:.3g}, beyond float32's range (|r| <= {F32_MAX:.3g}); scale it down")
    return x


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise RewardTimeout in the main thread after `seconds`, and again every second after that until the
    call returns (SIGALRM; no limit off the main thread); yields {"fired": bool}. Code that catches every
    BaseException in a loop can still run on: only a separate process could be killed for sure."""
    clock = {"fired": False}
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield clock
        return

    def expire(signum, frame):
        clock["fired"] = True
        raise RewardTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield clock
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _question(example) -> str:
    try:
        return str(example["messages"][0]["content"])[:60]
    except (KeyError, IndexError, TypeError):
        return str(example)[:60]
