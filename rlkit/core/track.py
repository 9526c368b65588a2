"""What the pipeline tells a run's tracking, and the tracker every stage writes its metrics to.

    tracker = tracking.open(cfg, run_dir, dist_info, resume, device, dtype)   # once, before the first entry
    tracker.metrics({"loss": 2.31, "lr_mult": 1.0}, step=10, stage="pretrain")   # stages: one write a step
    tracker.text("samples", "Q: ...\nA: ...", step=50, stage="rl")
    tracking.stage_done(ctx, seconds, stage)    # after each entry
    tracking.run_done(cfg, run_dir, tracker, seconds)
    tracking.run_failed(cfg, run_dir, tracker, error, seconds)   # instead, when an entry raised or was stopped
    tracker.close()

The base classes here write nowhere: a Tracker remembers, per stage and metric, the first/last/min/max/mean
of what was tracked (what a report card prints), and a Tracking hands one out. `rlkit run` passes the
library's rlkit.lib.tracking.aim.RunTracking (an Aim run on rank 0 and runs/<name>/report.md), so core knows
no tracking backend. Metrics carry the context {stage: ...} (evaluations {stage, task}).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


class Tracker:
    """Writes nowhere; remembers summary statistics of every metric for the report card."""
    hash = None
    repo = None

    def __init__(self):
        self.stats: dict[str, dict[str, dict]] = {}  # stage -> metric -> {first, last, min, max, sum, count}

    def params(self, params: Mapping[str, Any]) -> None:
        pass

    def metrics(self, values: Mapping[str, float], step: int, stage: str, task: str | None = None) -> None:
        """Track values with the context {stage} (an eval's with {stage, task}; the report card keeps those
        as "<task>/<metric>")."""
        values = {name: float(v) for name, v in values.items()}
        self._remember({f"{task}/{k}": v for k, v in values.items()} if task else values, step, stage)
        self._write(values, step, stage, task)

    def text(self, name: str, text: str, step: int, stage: str) -> None:
        pass

    def close(self) -> None:
        pass

    def stage_stats(self, stage: str) -> dict[str, dict]:
        """{metric: {first, last, min, max, mean, first_step, last_step}} of what `stage` tracked."""
        out = {}
        for name, s in self.stats.get(stage, {}).items():
            mean = s["sum"] / s["count"] if s["count"] else float("nan")
            out[name] = {k: s[k] for k in ("first", "last", "min", "max", "first_step", "last_step")} | {"mean": mean}
        return out

    def _remember(self, values: dict[str, float], step: int, stage: str) -> None:
        seen = self.stats.setdefault(stage, {})
        for name, v in values.items():
            s = seen.get(name)
            if s is None:
                seen[name] = {"first": v, "last": v, "min": v, "max": v, "sum": v, "count": 1,
                              "first_step": step, "last_step": step}
                continue
            s.update(last=v, last_step=step, min=min(s["min"], v), max=max(s["max"], v),
                     sum=s["sum"] + v, count=s["count"] + 1)

    def _write(self, values: dict[str, float], step: int, stage: str, task: str | None = None) -> None:
        pass


class Tracking:
    """A run's tracking as the pipeline sees it; this one keeps metrics in memory and writes nothing."""

    def open(self, cfg, run_dir: Path, dist_info, resume: bool, device, dtype) -> Tracker:
        return Tracker()

    def stage_done(self, ctx, seconds: float, stage) -> None:
        """After an entry finished (ctx: its StageContext; stage: its Stage, for its `report`)."""

    def run_done(self, cfg, run_dir: Path, tracker: Tracker, seconds: float) -> None:
        """After the last entry."""

    def run_failed(self, cfg, run_dir: Path, tracker: Tracker, error: BaseException, seconds: float) -> None:
        """When the run stopped early: `error` is what was raised (e.g. rlkit.core.interrupt.Interrupted)."""
