"""Experiment tracking: one Aim run per pipeline run, on rank 0 only.

Aim locks a run to one process, so other ranks (and runs with tracking
disabled) get a NullTracker with the same methods. Metrics carry the context
{stage: ...}, so the Aim UI can split or group curves by stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


class NullTracker:
    """Accepts everything, records nothing."""
    hash = None

    def params(self, params: Mapping[str, Any]) -> None: ...

    def metrics(self, values: Mapping[str, float], step: int, stage: str) -> None: ...

    def text(self, name: str, text: str, step: int, stage: str) -> None: ...

    def close(self) -> None: ...


class AimTracker(NullTracker):
    """Writes to an aim.Run; each call is one write batch from the main loop, at most once a step."""

    def __init__(self, repo: Path, experiment: str, run_hash: str | None = None):
        import aim  # slow import: only where a run is really tracked

        repo.mkdir(parents=True, exist_ok=True)
        self._aim = aim
        self.run = aim.Run(run_hash=run_hash, repo=str(repo), experiment=experiment)
        self.hash = self.run.hash

    def params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self.run[key] = value

    def metrics(self, values: Mapping[str, float], step: int, stage: str) -> None:
        for name, value in values.items():
            self.run.track(float(value), name=name, step=step, context={"stage": stage})

    def text(self, name: str, text: str, step: int, stage: str) -> None:
        self.run.track(self._aim.Text(text), name=name, step=step, context={"stage": stage})

    def close(self) -> None:
        self.run.close()


def open_tracker(repo: str, experiment: str, enabled: bool, is_main: bool, run_hash: str | None = None):
    """An AimTracker on rank 0 when tracking is enabled, else a NullTracker."""
    if not (enabled and is_main):
        return NullTracker()
    return AimTracker(Path(repo), experiment, run_hash)
