"""A progress bar per stage, on rank 0: a live rich bar in a terminal, plain lines otherwise.

    bar = progress("pretrain", total=500, start=0)
    for step in ...:
        ...
        bar.update(step + 1, loss=loss_value)   # steps done, then the stage's key metric(s)
    bar.close()                                 # or: with progress(...) as bar:

In a terminal the bar shows steps, the metrics, elapsed time and ETA, and the
stage's own log lines scroll above it. When stdout is not a terminal (CI, a
file, pytest) it prints one plain line at every tenth of the stage instead,
so logs stay readable. Other ranks get a bar that does nothing.

Inside a step, `step_passes(ctx, session, n, done)` stands for range(n) over its accumulation passes: once
the step has run for INNER_AFTER seconds it prints `[pretrain] step 3: pass 12 of 32, 41s` every
INNER_AFTER seconds, and after each pass a Ctrl-C stops there (session.stop_mid_step), not at the step's end.
"""
from __future__ import annotations

import sys
import time

from rlkit.core.dist import dist_info, print0

INNER_AFTER = 5.0  # seconds into a step before its passes are reported, and between two reports


def progress(stage: str, total: int, start: int = 0):
    """A bar for `stage` going from `start` to `total` steps: LiveBar, PlainBar or NoBar."""
    if not dist_info().is_main or total <= 0:
        return NoBar()
    if sys.stdout.isatty():
        return LiveBar(stage, total, start)
    return PlainBar(stage, total, start)


def step_passes(ctx, session, n: int, done: int, what: str = "pass"):
    """range(n) for step `done`'s passes, reported when slow and stoppable after each (see the top)."""
    began = last = time.perf_counter()
    for k in range(n):
        yield k
        last = inner_report(ctx, done, f"{what} {k + 1} of {n}", began, last)
        if k + 1 < n:  # after the last pass the step ends anyway: end_step saves it
            session.stop_mid_step(f"after {what} {k + 1} of {n}")


def inner_report(ctx, done: int, where: str, began: float, last: float) -> float:
    """Print `[stage] step N: <where>, 41s` if the step has run INNER_AFTER seconds and as long since the last
    report; returns the time of the last report."""
    now = time.perf_counter()
    if now - began < INNER_AFTER or now - last < INNER_AFTER:
        return last
    print0(f"[{ctx.name}] step {done}: {where}, {_clock(now - began)}")
    return now


class NoBar:
    def update(self, step: int, **metrics: float) -> None: ...

    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PlainBar(NoBar):
    """One line each time another tenth of the steps is done: `[rl] 40/200 (20%) | reward 0.31 | ETA 2m05s`."""

    def __init__(self, stage: str, total: int, start: int):
        self.stage, self.total, self.start = stage, total, start
        self.began, self.next_mark = time.perf_counter(), start + max(1, total // 10)

    def update(self, step: int, **metrics: float) -> None:
        if step < self.next_mark and step != self.total:
            return
        self.next_mark = step + max(1, self.total // 10)
        elapsed = time.perf_counter() - self.began
        eta = elapsed / max(step - self.start, 1) * (self.total - step)
        print(f"[{self.stage}] {step}/{self.total} ({step / self.total:.0%}){_fmt(metrics)} | "
              f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}", flush=True)


class LiveBar(NoBar):
    """rich's Progress; print() output goes above the bar while it is live."""

    def __init__(self, stage: str, total: int, start: int):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), refresh_per_second=4)
        self.task = self.bar.add_task(stage, total=total, completed=start, metrics="")
        self.bar.start()

    def update(self, step: int, **metrics: float) -> None:
        self.bar.update(self.task, completed=step, metrics=_fmt(metrics).removeprefix(" | "))

    def close(self) -> None:
        self.bar.stop()


def _fmt(metrics: dict) -> str:
    return "".join(f" | {name} {value:.4g}" for name, value in metrics.items())


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"
