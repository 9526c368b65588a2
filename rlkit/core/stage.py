"""The stage contract: what a `rlkit_stages` plugin registers, and what its `check` is shown.

    @rlkit.hookimpl
    def rlkit_stages():
        return {"noise": Stage(config=NoiseConfig, run=run, check=check, report=report)}

- config: a dataclass; its fields are the keys of the stage's YAML entry (besides `kind` and
  `init`, which every entry may hold). Plugin references are declared with
  rlkit.core.config.plugin(kind) / plugin_list(kind), so core checks their names and args.
- run(ctx: StageContext, start: Checkpoint | None) -> Checkpoint: does the work. `start` is what
  the previous entry (or `init:`) handed on, None for a first entry; the returned handle goes to
  the next entry (a stage that trains nothing may return `start`).
- check(cfg, setup: StageSetup) -> None: every value run() will use, before any entry runs;
  raise RlkitError naming `setup.where + ".key"` and what would be valid.
- report(summary: dict, tracked: dict) -> list[str]: the stage's lines on the report card
  (summary: what run() put in ctx.summary; tracked: {metric: {first, last, min, max, mean, ...}}).
- evals(cfg) -> list[EvalTask] (optional): the tasks run() evaluates and with what settings (examples
  filled in), each with the entry's seed ctx.seed(); `rlkit eval RUN --task T` reuses them, so it
  reproduces the entry's figures. A stage that evaluates puts {title: {metric: value}} in
  ctx.summary["evals"]: the report card's table has a column for each entry that does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from rlkit.core.errors import RlkitError
from rlkit.core.plugins import Plugins


@dataclass(frozen=True)
class StageSetup:
    """The experiment-level facts a stage's check may use (no model, no device)."""
    where: str  # "<file>: stages.<entry>", the prefix of every error about this entry
    plugins: Plugins
    world_size: int  # processes the run will use
    model: Any  # the experiment's `model:` section (name, args, seq_len, dtype, compile)
    base_dir: Path  # the experiment file's folder: relative data paths start here
    has_start: bool  # whether a checkpoint (an earlier entry or init:) will be handed in
    tokenizer: Any = None  # the rlkit Tokenizer the entry starts with, once known (from init:, or after the entry
    #                        that trains it: then the later entries are checked again, before the next one runs)


@dataclass(frozen=True)
class Stage:
    config: type
    run: Callable  # (ctx, start) -> Checkpoint
    check: Optional[Callable] = None  # (cfg, setup) -> None
    report: Optional[Callable] = None  # (summary, tracked) -> list[str]
    evals: Optional[Callable] = None  # (cfg) -> [rlkit.lib.evaluation.evaluate.EvalTask]: what run() evaluates, and how


# --- helpers for a stage's check -------------------------------------------------------------------

def at_least(cfg, setup: StageSetup, low, *keys: str) -> None:
    """Each dotted key of `cfg` (e.g. "rollout.samples") must be a finite number >= low."""
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise RlkitError(f"{setup.where}.{key}: {value} is not a finite number; give one >= {low}")
        if value < low:
            need = "not be negative" if low == 0 else f"be at least {low}"
            raise RlkitError(f"{setup.where}.{key}: {value} must {need}")


def divides(setup: StageSetup, key: str, total: int, unit: int, unit_text: str) -> None:
    """`total` (the value of `key`) must split into whole `unit`s (e.g. device batches over all ranks)."""
    if total % unit:
        raise RlkitError(f"{setup.where}.{key}: {total} must be a multiple of {unit_text} = {unit} "
                         f"(e.g. {unit}, {2 * unit}, {4 * unit})")

