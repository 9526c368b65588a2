"""Runs an experiment: check every entry first, then run the entries in YAML order, handing each
the previous one's checkpoint.

    cfg, plugins = prepare("experiments/quickstart.yaml", ["seed=1"], [])
    run(cfg, plugins)

`prepare` loads the YAML and every plugin (built-in, installed, local files), checks each stage
entry against its stage's config dataclass, binds every plugin reference's `args` to the plugin's
signature and runs each stage's own `check`, so a mistake fails in a second, before any model is
built. `run` then calls each entry's `stage.run(ctx, start)` and records the Checkpoint it returns
as runs/<name>/<entry>/output.json (what `--resume` and the next entry start from).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlkit.core import config as config_lib
from rlkit.core import handoff, policy
from rlkit.core.errors import RlkitError
from rlkit.core.plugins import Plugins, bind_args, load_plugins
from rlkit.core.stage import Stage, StageSetup

CHOICES = {"device": ("auto", "cpu", "cuda", "mps"), "model.dtype": ("auto", "float32", "bfloat16"),
           "model.compile": ("auto", "true", "false")}


@dataclass(frozen=True)
class Entry:
    name: str  # the YAML key: its folder, Aim context and report section
    kind: str  # the stage plugin
    stage: Stage
    cfg: Any  # the stage's typed config
    init: str | None  # start from this checkpoint instead of the previous entry's


def prepare(path: str | Path, overrides: list[str], extra_plugins: list[Path],
            world_size: int | None = None) -> tuple[DictConfig, Plugins]:
    """Load and check the experiment and its plugins for `world_size` processes (default: torchrun's
    WORLD_SIZE, else 1); returns (config, plugin tables)."""
    path = Path(path)
    cfg = config_lib.load(path, overrides)
    base_dir = path.resolve().parent
    local = [(base_dir / p) for p in cfg.plugins] + [Path(p) for p in extra_plugins]
    for p in local:
        if not p.is_file():
            raise RlkitError(f"{path}: plugins: {p}: file not found")
    plugins = load_plugins(local)
    with _writable(cfg):
        cfg.base_dir = str(base_dir)  # where relative data paths in the YAML are resolved from
        cfg.experiment = str(OmegaConf.load(path).get("name") or cfg.name)  # the YAML's own name: Aim's experiment
    check_values(cfg, path)
    _name_model(cfg, plugins, path)
    world = world_size or int(os.environ.get("WORLD_SIZE", 1))
    found = entries(cfg, plugins, path)
    if not found:
        raise RlkitError(f"{path}: stages: empty; list at least one stage entry "
                         f"(installed stages: {', '.join(sorted(plugins.tables['stage'])) or 'none'})")
    for i, e in enumerate(found):
        where = f"{path}: stages.{e.name}"
        if e.init is not None:  # a missing start fails now, not after the entries before it
            handoff.Checkpoint.open(e.init, f"{where}.init")
        if e.stage.check is not None:
            setup = StageSetup(where, plugins, world, cfg.model, base_dir, has_start=i > 0 or e.init is not None)
            e.stage.check(e.cfg, setup)
    return cfg, plugins


def entries(cfg: DictConfig, plugins: Plugins, path="experiment") -> list[Entry]:
    """Every stage entry checked against its stage's dataclass, plugin names and args bound; the resolved
    entry (defaults filled in, `kind` explicit) replaces the YAML's in `cfg`, so config.yaml shows it."""
    found = []
    for name in config_lib.stages_to_run(cfg):
        where, kind = f"{path}: stages.{name}", config_lib.entry_kind(cfg, name)
        key = f"{where}.kind" if cfg.stages[name].get("kind") else where
        stage = plugins.get("stage", kind, key)
        typed, merged = config_lib.entry_config(stage.config, name, cfg.stages[name], where, plugins.tables)
        for at, plugin_kind, ref in config_lib.plugin_refs(typed):
            fn = plugins.get(plugin_kind, ref.name, f"{where}.{at}.name")
            bind_args(plugin_kind, ref.name, fn, ref.args, f"{where}.{at}.args")
        init = cfg.stages[name].get("init")
        with _writable(cfg):
            cfg.stages[name] = OmegaConf.merge({"kind": kind, "init": init}, merged)
        found.append(Entry(name, kind, stage, typed, None if init is None else str(init)))
    return found


def check_values(cfg: DictConfig, path) -> None:
    """Top-level choices and the context length, before any work."""
    for key, valid in CHOICES.items():
        value = str(OmegaConf.select(cfg, key)).lower()
        if value not in valid:
            raise RlkitError(f"{path}: {key}: '{value}' is not valid (valid: {', '.join(valid)})")
    if cfg.model.seq_len < 1:
        raise RlkitError(f"{path}: model.seq_len: {cfg.model.seq_len} must be at least 1")


def _name_model(cfg: DictConfig, plugins: Plugins, path) -> None:
    """Resolve `model.name` (checking `model.args` against the plugin) when the section says enough to."""
    args = OmegaConf.to_container(cfg.model.args)
    if cfg.model.name is None and not args and len(plugins.tables["model"]) != 1:
        return  # nothing to go by: a model built from scratch must then name its plugin (context.load_model)
    with _writable(cfg):
        cfg.model.name = policy.model_name(plugins, cfg.model.name, args, f"{path}: model")


def run(cfg: DictConfig, plugins: Plugins, resume: bool = False) -> None:
    """Run the entries in order, each starting from the previous one's checkpoint (or its own `init:`)."""
    from rlkit.core import dist, interrupt, report, track
    from rlkit.core.context import StageContext

    info, device = dist.init(cfg.device)
    dtype = dist.compute_dtype(cfg.model.dtype, device)
    run_dir = Path(cfg.run_dir)
    found = entries(cfg, plugins)
    _check_run_dir(run_dir, cfg, resume)
    tracker = track.open_run(cfg, run_dir, info, resume)
    env, began = track.environment(device, dtype, info.world_size), time.time()
    interrupt.install()
    try:
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, run_dir / "config.yaml")
        tracker.params({"hparams": OmegaConf.to_container(cfg), "env": env})
        dist.print0(f"rlkit: {cfg.name}: stages {', '.join(e.name for e in found)} on {device} ({dtype}), "
                    f"world size {info.world_size}, run dir {run_dir}")
        start = None
        for index, e in enumerate(found):
            done = handoff.finished(run_dir / e.name) if resume else None
            if done is not None:
                start = done
                dist.print0(f"[{e.name}] already finished: skipping (--resume)")
                continue
            if e.init is not None:
                start = handoff.Checkpoint.open(e.init, f"stages.{e.name}.init")
            ctx = StageContext(e.name, e.cfg, cfg, index, plugins, run_dir, device, dtype, info, tracker,
                               resume=resume, init=e.init, start_path=start.path if start else None)
            dist.seed_everything(ctx.seed())
            began_stage = time.time()
            start = e.stage.run(ctx, start)
            if not isinstance(start, handoff.Checkpoint):
                raise RlkitError(f"stages.{e.name}: stage '{e.kind}' returned {type(start).__name__} from run(); "
                                 "it must return a Checkpoint (rlkit.core.handoff), e.g. ctx.save(...)")
            if info.is_main:
                handoff.write_output(run_dir / e.name, start)
            dist.barrier()
            seconds = time.time() - began_stage
            dist.print0(f"[{e.name}] done in {seconds:.1f}s")
            report.stage_done(ctx, seconds, env, e.stage)  # report.md after every entry
        report.run_done(cfg, run_dir, tracker, env, time.time() - began)
        dist.barrier()  # leave together: a rank tearing down gloo while a peer is still busy can abort
    finally:
        interrupt.uninstall()
        tracker.close()
        dist.shutdown()


def _check_run_dir(run_dir: Path, cfg: DictConfig, resume: bool) -> None:
    """Never overwrite a run by accident, and resume only the run that was started."""
    saved = run_dir / "config.yaml"
    holds_work = any(run_dir.glob(f"*/{handoff.OUTPUT_FILE}")) or any(run_dir.glob("*/step_*"))
    if not saved.exists() or (not resume and not holds_work):  # nothing saved yet: nothing to lose
        return
    if not resume:
        raise RlkitError(f"run_dir: {run_dir} already holds a run; continue it with --resume, or start a new "
                         f"one with name=<new name> or run_dir=<new folder>")
    from rlkit.core.compare import config_diff

    before, now = OmegaConf.to_container(OmegaConf.load(saved)), OmegaConf.to_container(cfg)
    changed = [row["key"] for row in config_diff([before, now]) if row["key"] != "base_dir"]  # a moved folder
    if changed:
        raise RlkitError(f"--resume: the config differs from the run's {saved} in {', '.join(changed[:5])}"
                         f"{' ...' if len(changed) > 5 else ''}; resume with the same config, or start a new run")


class _writable:
    """Temporarily lift OmegaConf's struct flag to add a derived key."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self):
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.cfg, True)
