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

from omegaconf import DictConfig, OmegaConf, open_dict

from rlkit.core import config as config_lib
from rlkit.core import dist, handoff, interrupt, policy
from rlkit.core.context import StageContext
from rlkit.core.errors import RlkitError, first_line
from rlkit.core.plugins import Plugins, bind_args, load_plugins
from rlkit.core.files import atomic_write
from rlkit.core.lock import RunLock
from rlkit.core.parallelism import Parallelism, default_for
from rlkit.core.stage import Stage, StageSetup
from rlkit.core.track import Tracking
from rlkit.core.yamlfile import read_profile

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class Entry:
    name: str  # the YAML key: its folder, Aim context and report section
    kind: str  # the stage plugin
    stage: Stage
    cfg: Any  # the stage's typed config
    init: str | None  # start from this checkpoint (or earlier entry's hand-off) instead of the previous entry's


def prepare(path: str | Path, overrides: list[str], extra_plugins: list[Path],
            world_size: int | None = None) -> tuple[DictConfig, Plugins]:
    """Load and check the experiment and its plugins for `world_size` processes (default: torchrun's
    WORLD_SIZE, else 1); returns (config, plugin tables)."""
    return prepare_entries(path, overrides, extra_plugins, world_size)[:2]


def prepare_entries(path: str | Path, overrides: list[str], extra_plugins: list[Path],
                    world_size: int | None = None) -> tuple[DictConfig, Plugins, list[Entry]]:
    """prepare, also returning the checked entries (`rlkit check` prints their learning rates from them)."""
    path = Path(path)
    cfg = config_lib.load(path, overrides)
    base_dir = path.resolve().parent
    local = [(base_dir / p) for p in cfg.plugins] + [Path(p) for p in extra_plugins]
    for p in local:
        if not p.is_file():
            raise RlkitError(f"{path}: plugins: {p}: file not found")
    plugins = load_plugins(local)
    with open_dict(cfg):
        cfg.base_dir = str(base_dir)  # where relative data paths in the YAML are resolved from
        cfg.experiment = str(read_profile(path).get("name") or cfg.name)  # the YAML's own name: Aim's experiment
    check_values(cfg, path)
    world = world_size or int(os.environ.get("WORLD_SIZE", 1))
    _name_model(cfg, plugins, path)
    found = entries(cfg, plugins, path)
    if not found:
        raise RlkitError(f"{path}: stages: empty; list at least one stage entry "
                         f"(installed stages: {', '.join(sorted(plugins.tables['stage'])) or 'none'})")
    for i, e in enumerate(found):
        where = f"{path}: stages.{e.name}"
        if e.init in [f.name for f in found[i:]]:
            when = "later" if e.init != e.name else "here"
            raise RlkitError(f"{where}.init: '{e.init}' is an entry that runs {when}; init: may name an earlier "
                             "entry, a checkpoint, an entry folder or a run folder")
        tokenizer = None
        if e.init is not None and e.init not in [f.name for f in found[:i]]:  # a missing start fails now
            tokenizer = _tokenizer_of(plugins, handoff.Checkpoint.open(e.init, f"{where}.init"))
        if e.stage.check is not None:
            setup = StageSetup(where, plugins, world, cfg.model, base_dir, has_start=i > 0 or e.init is not None,
                               tokenizer=tokenizer)
            e.stage.check(e.cfg, setup)
    return cfg, plugins, found


def _tokenizer_of(plugins: Plugins, handle) -> Any:
    """The tokenizer a hand-off carries (None when it has none, e.g. a model plugin brings its own)."""
    if handle is None or handle.tokenizer is None:
        return None
    return policy.load_tokenizer(plugins, handle.tokenizer, "tokenizer")


def _check_later(cfg, plugins, found: list[Entry], index: int, start, world: int) -> None:
    """Once an entry hands on a tokenizer (a tokenizer stage, first and quick), check the entries after it
    again with it, before the next one runs: values that need token counts (rollouts against model.seq_len)
    fail now, not after hours of the entries in between."""
    tokenizer = _tokenizer_of(plugins, start)
    if tokenizer is None:
        return
    for e in found[index + 1:]:
        if e.stage.check is not None and (e.init is None or e.init in [f.name for f in found]):
            e.stage.check(e.cfg, StageSetup(f"stages.{e.name}", plugins, world, cfg.model, Path(cfg.base_dir),
                                            has_start=True, tokenizer=tokenizer))


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
            if cfg.parallel.strategy == "fsdp" and getattr(fn, "needs_whole_weights", False):
                raise RlkitError(f"{where}.{at}.name: {plugin_kind} '{ref.name}' needs whole weight matrices, which "
                                 "parallel.strategy=fsdp shards; use adamw, or parallel.strategy=ddp")
        init = cfg.stages[name].get("init")
        with open_dict(cfg):
            cfg.stages[name] = OmegaConf.merge({"kind": kind, "init": init}, merged)
        found.append(Entry(name, kind, stage, typed, None if init is None else str(init)))
    return found


def check_values(cfg: DictConfig, path) -> None:
    """The top-level values a field declaration cannot check (config.load checks the declared ones)."""
    peak = cfg.get("mfu_peak_flops")
    if peak is not None and not peak > 0:
        raise RlkitError(f"{path}: mfu_peak_flops: {peak} must be a positive FLOP/s figure, e.g. 1.98e14 (or leave it "
                         "out: the device's recorded matmul peak)")
    name = str(cfg.name)
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name) > 200 or name != name.strip():
        raise RlkitError(f"{path}: name: {name!r} cannot name a run folder; use letters, digits, '-', '_' or '.' "
                         "(no '/', at most 200 characters)")


def _name_model(cfg: DictConfig, plugins: Plugins, path) -> None:
    """Resolve `model.name` (checking `model.args` against the plugin) when the section says enough to.
    (Whether the model fits the device is checked by the commands: rlkit.lib.training.memory.)"""
    args = OmegaConf.to_container(cfg.model.args)
    if cfg.model.name is None and not args and len(plugins.tables["model"]) != 1:
        return  # nothing to go by: a model built from scratch must then name its plugin (context.load_model)
    with open_dict(cfg):
        cfg.model.name = policy.model_name(plugins, cfg.model.name, args, f"{path}: model")
    policy.check_model(plugins, cfg.model.name, args, cfg.model.seq_len, f"{path}: model")


def run(cfg: DictConfig, plugins: Plugins, resume: bool = False, tracking: Tracking | None = None,
        parallel: Parallelism | None = None) -> None:
    """Run the entries in order, each starting from the previous one's checkpoint (or its own `init:`),
    holding the run folder's lock throughout. `tracking` (rlkit.core.track.Tracking) hands out the tracker
    and hears when each entry ends; `rlkit run` passes Aim and the report card, the default writes nothing.
    `parallel` (rlkit.core.parallelism.Parallelism) spans each training model over the ranks; `rlkit run`
    passes the strategy `parallel:` names, the default is ddp without extras."""
    parallel = parallel or default_for(cfg.parallel)
    info, device = dist.init(cfg.device)
    try:
        dtype = dist.compute_dtype(cfg.model.dtype, device)
        run_dir = Path(cfg.run_dir)
        found = entries(cfg, plugins)
        lock = _lock(run_dir, info, device)
        try:
            _run(cfg, plugins, found, run_dir, resume, info, device, dtype, tracking or Tracking(), parallel)
        finally:
            lock.release()
    finally:
        dist.shutdown()


def _run(cfg, plugins, found, run_dir, resume, info, device, dtype, tracking: Tracking, parallel) -> None:
    _check_run_dir(run_dir, cfg, found, resume)
    tracker, began = tracking.open(cfg, run_dir, info, resume, device, dtype), time.time()
    interrupt.install()
    try:
        _entries(cfg, plugins, found, run_dir, resume, info, device, dtype, tracking, tracker, parallel)
        tracking.run_done(cfg, run_dir, tracker, time.time() - began)
        dist.barrier()  # leave together: a rank tearing down gloo while a peer is still busy can abort
    except BaseException as e:  # a failed or stopped run is marked so (Aim, summary.json), then fails as before
        tracking.run_failed(cfg, run_dir, tracker, e, time.time() - began)
        raise
    finally:
        interrupt.uninstall()
        tracker.close()


def _entries(cfg, plugins, found, run_dir, resume, info, device, dtype, tracking: Tracking, tracker, parallel) -> None:
    """Run each entry in order, each starting from what the one before handed on."""
    if info.is_main:
        atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))
    dist.print0(f"rlkit: {cfg.name}: stages {', '.join(e.name for e in found)} on {device} ({dtype}), "
                f"world size {info.world_size}, run dir {run_dir}")
    start, checked = None, None
    for index, e in enumerate(found):
        if start is not None and start.tokenizer != checked:  # a new tokenizer: check what comes with it
            _check_later(cfg, plugins, found, index - 1, start, info.world_size)
            checked = start.tokenizer
        done = handoff.finished(run_dir / e.name) if resume else None
        if done is not None:
            start = done
            dist.print0(f"[{e.name}] already finished: skipping (--resume)")
            continue
        if e.init is not None:  # an earlier entry's name: what it handed on in this run
            earlier = e.init in [f.name for f in found[:index]]
            start = handoff.Checkpoint.open(run_dir / e.init if earlier else e.init, f"stages.{e.name}.init")
        ctx = StageContext(e.name, e.cfg, cfg, index, plugins, run_dir, device, dtype, info, tracker,
                           resume=resume, init=e.init, start_path=start.path if start else None, parallel=parallel)
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
        tracking.stage_done(ctx, seconds, e.stage)  # the report card after every entry


def _lock(run_dir: Path, info, device) -> RunLock:
    """Rank 0 takes the run folder's lock; every rank learns whether it could, so all stop together."""
    lock, error = RunLock(run_dir), None
    if info.is_main:
        try:
            lock.acquire()
        except RlkitError as e:
            error = e
    if dist.all_reduce_max(error is not None, device, bool):
        raise error or RlkitError(f"run_dir: {run_dir} is in use by another rlkit run (rank 0 says which)")
    return lock


def _check_run_dir(run_dir: Path, cfg: DictConfig, found: list[Entry], resume: bool) -> None:
    """Never overwrite a run by accident; resume only the run that was started, with changes allowed only to
    entries that have not started yet (so a mistake found late is fixed without redoing finished work)."""
    saved = run_dir / CONFIG_FILE
    if not resume:
        if _holds_work(run_dir):  # with or without its config.yaml: never overwrite what was saved
            raise RlkitError(f"run_dir: {run_dir} already holds a run; continue it with --resume, or start a new "
                             f"one with name=<new name> or run_dir=<new folder>")
        return
    if not saved.exists():
        if _holds_work(run_dir):  # finished entries without a config (a sweep's shared ones): nothing to compare
            return
        raise RlkitError(f"--resume: {run_dir} holds no run to resume (no {CONFIG_FILE}); start it without --resume")
    try:
        before = OmegaConf.to_container(OmegaConf.load(saved))
    except Exception as e:  # noqa: BLE001 -- a damaged config.yaml: say which file and what to do
        raise RlkitError(f"--resume: {saved} cannot be read ({first_line(e)}); restore it, or start a new run "
                         "with name=<new name>") from None
    changed = [row["key"] for row in config_lib.config_diff([before, OmegaConf.to_container(cfg)]) if row["key"] != "base_dir"]
    fresh = {e.name for e in found if _not_started(run_dir / e.name)}
    # where metrics go changes no result; how training spans the ranks neither (checkpoints are whole)
    tracking = [k for k in changed if k.startswith(("tracking.", "parallel."))]
    refused = [k for k in changed if k not in tracking and not (k.startswith("stages.") and k.split(".")[1] in fresh)]
    if refused:
        ran = sorted({k.split(".")[1] for k in refused if k.startswith("stages.")})
        what = f" (entries that already ran: {', '.join(ran)})" if ran else ""
        raise RlkitError(f"--resume: the config differs from the run's {saved} in {', '.join(refused[:5])}"
                         f"{' ...' if len(refused) > 5 else ''}{what}; resume with the same values there, or start "
                         "a new run")
    for key in changed:
        why = "it changes no result" if key in tracking else f"{key.split('.')[1]} has not started yet"
        dist.print0(f"--resume: {key} changed; {why}, so the new value is used")


def _holds_work(run_dir: Path) -> bool:
    """Whether any entry folder holds a saved file (a checkpoint, a tokenizer, a hand-off)."""
    return run_dir.is_dir() and any(not _not_started(d) for d in run_dir.iterdir() if d.is_dir())


def _not_started(entry_dir: Path) -> bool:
    return not entry_dir.is_dir() or not any(p for p in entry_dir.iterdir() if not p.name.startswith("."))

