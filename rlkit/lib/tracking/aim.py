"""Experiment tracking in Aim: one Aim run per pipeline run, on rank 0 only, and the report card.

    tracker = open_run(cfg, run_dir, dist_info, resume=False)
    tracker.params({"hparams": ..., "env": environment(device, dtype, world_size)})
    tracker.metrics({"loss": 2.31, "lr_mult": 1.0}, step=10, stage="pretrain")   # one write a step
    tracker.text("samples", "Q: ...\nA: ...", step=50, stage="rl")
    tracker.close()   # closes and indexes the Aim run: SDK queries see it at once

Aim locks a run to one process, so other ranks (and runs with tracking
disabled) get a plain Tracker: it writes nowhere but still keeps, per stage
and metric, the first/last/min/max/mean of what was tracked, which is what
the report card (rlkit.lib.tracking.report) prints. Metrics carry the context
{stage: ...} (evaluations {stage, task}), so the Aim UI can split or group curves by stage and task.

The experiment is the YAML's own `name:` (before overrides), the run's name
is the resolved `name` (unique: it is also the run folder), so `rlkit compare`
can take either a run name or an Aim hash. The hash is kept in
runs/<name>/aim_hash, and `--resume` continues the same Aim run.
"""
from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf

import rlkit
from rlkit.core.dist import print0
from rlkit.core.errors import first_line
from rlkit.core.files import atomic_write
from rlkit.core.interrupt import Interrupted
from rlkit.core.track import Tracker, Tracking
from rlkit.lib.tracking import report
from rlkit.lib.tracking.aimrepo import probe, reading

HASH_FILE = "aim_hash"


class AimTracker(Tracker):
    """Writes to an aim.Run; each `metrics` call is one write (all values at once) from the main loop."""

    def __init__(self, repo: Path, experiment: str, name: str, run_hash: str | None = None):
        super().__init__()
        import aim  # slow import: only where a run is really tracked

        (repo.parent if repo.name == ".aim" else repo).mkdir(parents=True, exist_ok=True)  # Aim makes .aim itself
        self._aim, self.repo = aim, repo
        probe(repo, "tracking.repo")  # a damaged repository is one line, before any work
        with reading(repo, "tracking.repo"):
            self.run = self._open(run_hash, experiment)
            self.run.name = name
        self.hash = self.run.hash

    def _open(self, run_hash: str | None, experiment: str):
        """The Aim run (`run_hash`'s, to continue it); a run no longer in the repository (the repository was
        deleted or moved since) gives a new one, and a line saying so: the steps from here on are tracked."""
        from aim.sdk.errors import MissingRunError

        # terminal logs stay out: the progress bar would fill them; system metrics are sampled on Aim's thread
        open_ = functools.partial(self._aim.Run, repo=str(self.repo), experiment=experiment, capture_terminal_logs=False)
        try:
            return open_(run_hash=run_hash)
        except MissingRunError:
            print0(f"[track] Aim run {run_hash} is not in {self.repo} (deleted or moved?); tracking continues in a "
                   "new Aim run, from this point of the run on")
            return open_(run_hash=None)

    def params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self.run[key] = _plain(value)

    def _write(self, values: dict[str, float], step: int, stage: str, task: str | None = None) -> None:
        self.run.track(values, step=step, context={"stage": stage} | ({"task": task} if task else {}))

    def text(self, name: str, text: str, step: int, stage: str) -> None:
        self.run.track(self._aim.Text(text), name=name, step=step, context={"stage": stage})

    def close(self) -> None:
        if self.run is None:
            return
        self.run.close()
        self.run = None
        index_run(self.repo, self.hash)


def index_run(repo: Path, run_hash: str) -> None:
    """Add a closed run to the repo's index, as `aim up` would in the background: Repo.iter_runs and
    query_runs read the index only, and Aim does not index a run when it closes."""
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager

    for wait in (0.1, 0.3, 0.6, 1.0, None):  # the index is locked while another process writes it: try again
        try:
            RepoIndexManager.get_index_manager(Repo.from_path(str(repo))).index(run_hash)
            return
        except Exception as e:  # still locked (`rlkit ui`, aim up, holds it for good and indexes the run itself)
            if wait is None:
                print0(f"[track] could not index Aim run {run_hash} now ({type(e).__name__}); `rlkit ui` will")
            else:
                time.sleep(wait)


def open_tracker(repo: str, experiment: str, enabled: bool, is_main: bool, run_hash: str | None = None,
                 name: str | None = None) -> Tracker:
    """An AimTracker on rank 0 when tracking is enabled, else a Tracker that writes nowhere."""
    if not (enabled and is_main):
        return Tracker()
    return AimTracker(Path(repo), experiment, name or experiment, run_hash)


def open_run(cfg, run_dir: Path, dist_info, resume: bool = False) -> Tracker:
    """The pipeline's tracker: experiment = the YAML's name, run name = the resolved name; with --resume,
    the same Aim run as before (its hash is kept in run_dir/aim_hash)."""
    hash_file = run_dir / HASH_FILE
    run_hash = hash_file.read_text().strip() if resume and hash_file.is_file() else None
    experiment = cfg.get("experiment") or cfg.name
    tracker = open_tracker(cfg.tracking.repo, experiment, cfg.tracking.enabled, dist_info.is_main, run_hash,
                           name=cfg.name)
    if tracker.hash is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(hash_file, tracker.hash + "\n")
    return tracker


def environment(device: torch.device, dtype: torch.dtype, world_size: int) -> dict[str, Any]:
    """What ran where: versions, device, world size, and the git commit of the code (when in a checkout)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} cores"
    return {"rlkit": rlkit.__version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "device": f"{device.type} ({name})", "dtype": str(dtype).removeprefix("torch."),
            "world_size": world_size, "git_sha": git_sha(Path(rlkit.__file__).resolve().parent)}


def git_sha(folder: Path) -> str | None:
    """HEAD's commit of the checkout holding `folder` ('+dirty' if it has uncommitted changes), else None."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _plain(value: Any) -> Any:
    """Aim params take plain JSON-like values; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunTracking(Tracking):
    """What `rlkit run` tracks: an Aim run (rank 0, when tracking.enabled) with the config and the
    environment as params, and the report card runs/<name>/report.md rewritten after every entry."""

    def open(self, cfg, run_dir: Path, dist_info, resume: bool, device, dtype) -> Tracker:
        from rlkit.lib.training.speed import peak_flops

        peak, source = peak_flops(device, dtype, cfg.get("mfu_peak_flops"))
        self.env = environment(device, dtype, dist_info.world_size) | {"mfu_peak": f"{peak / 1e12:.3g} TFLOP/s, "
                                                                                   f"{source}"}
        tracker = open_run(cfg, run_dir, dist_info, resume)
        tracker.params({"hparams": OmegaConf.to_container(cfg), "env": self.env, "status": "running", "error": None})
        return tracker

    def stage_done(self, ctx, seconds: float, stage) -> None:
        report.stage_done(ctx, seconds, self.env, stage)

    def run_done(self, cfg, run_dir: Path, tracker: Tracker, seconds: float) -> None:
        report.run_done(cfg, run_dir, tracker, self.env, seconds)
        tracker.params({"status": "finished", "error": None})

    def run_failed(self, cfg, run_dir: Path, tracker: Tracker, error: BaseException, seconds: float) -> None:
        """The Aim run's `status` param says "failed" or "interrupted" (Aim's own badge says only "Finished")
        with the error's line in `error`; summary.json and the report card say the same."""
        status, line = outcome(error)
        try:
            tracker.params({"status": status, "error": line})
            report.run_failed(cfg, run_dir, tracker, getattr(self, "env", {}), status, line, seconds)
        except Exception as e:  # noqa: BLE001 -- marking must never hide the error that stopped the run
            print0(f"[track] could not mark the run {status} ({type(e).__name__}: {e})")


def outcome(error: BaseException | None) -> tuple[str, str | None]:
    """(status, error line) of a run that ended with `error`: "finished" (None), "interrupted" (a clean stop
    or Ctrl-C) or "failed", so a failed run is never mistaken for a finished one."""
    if error is None:
        return "finished", None
    line = f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
    stopped = isinstance(error, (KeyboardInterrupt, Interrupted))
    return ("interrupted" if stopped else "failed"), line[:300]
