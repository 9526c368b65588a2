"""The stage contract: what a `rlkit_stages` plugin registers, and what its `check` is shown.

    @rlkit.hookimpl
    def rlkit_stages():
        return {"noise": Stage(config=NoiseConfig, run=run, check=check, report=report)}

- config: a dataclass; its fields are the keys of the stage's YAML entry (besides `kind` and
  `init`, which every entry may hold). Plugin references are declared with
  rlkit.core.config.plugin(kind) / plugin_list(kind), so core checks their names and args; bounds
  and choices with bounded(default, ge=) / one_of(default, choices), checked as the entry loads.
- run(ctx: StageContext[Config], start: Checkpoint | None) -> Checkpoint: does the work (a training
  stage through ctx.session(start, optimizer): rlkit.core.session). `start` is what the previous
  entry (or `init:`) handed on, None for a first entry; the returned handle goes to the next entry
  (a stage that trains nothing may return `start`).
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

import dataclasses
import math
from dataclasses import dataclass, field
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
    run: Callable  # (ctx: StageContext[config], start: Checkpoint | None) -> Checkpoint
    check: Optional[Callable] = None  # (cfg, setup) -> None
    report: Optional[Callable] = None  # (summary, tracked) -> list[str]
    evals: Optional[Callable] = None  # (cfg) -> [rlkit.lib.evaluation.evaluate.EvalTask]: what run() evaluates, and how


# --- field constraints: declared on a stage config's fields, checked by core as the entry loads ----

def bounded(default, ge: float):
    """A number field that must be finite and >= `ge`: `steps: int = bounded(500, ge=1)`. Core checks it
    when the entry is loaded (check_fields), in one line naming the file and key."""
    return field(default=default, metadata={"ge": ge})


def one_of(default, choices):
    """A field whose value must be one of `choices`: `mode: str = one_of("letter", MODES)`."""
    return field(default=default, metadata={"choices": tuple(choices)})


def check_fields(obj, prefix: str) -> None:
    """Every bounded / one_of field of a typed config, nested sections and lists of them included."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if "ge" in f.metadata and value is not None:
            check_low(value, f.metadata["ge"], key)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise RlkitError(f"{key}: {value!r} is not valid (valid: {', '.join(map(str, f.metadata['choices']))})")
        items = [(f"{key}[{i}].", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key + ".", value)]
        for at, item in items:
            if dataclasses.is_dataclass(item):
                check_fields(item, at)


def check_low(value, low, key: str) -> None:
    """`value` (of `key`) must be a finite number >= low."""
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise RlkitError(f"{key}: {value} is not a finite number; give one >= {low}")
    if value < low:
        raise RlkitError(f"{key}: {value} must {'not be negative' if low == 0 else f'be at least {low}'}")


# --- helpers for a stage's check -------------------------------------------------------------------

def at_least(cfg, setup: StageSetup, low, *keys: str) -> None:
    """Each dotted key of `cfg` (e.g. "rollout.samples") must be a finite number >= low. (Built-in stages
    declare this on the field instead: rlkit.core.config.bounded.)"""
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        check_low(value, low, f"{setup.where}.{key}")


def divides(setup: StageSetup, key: str, total: int, unit: int, unit_text: str) -> None:
    """`total` (the value of `key`) must split into whole `unit`s (e.g. device batches over all ranks)."""
    if total % unit:
        raise RlkitError(f"{setup.where}.{key}: {total} must be a multiple of {unit_text} = {unit} "
                         f"(e.g. {unit}, {2 * unit}, {4 * unit})")

