"""Runs an experiment: validate everything first, then the stages in order.

    cfg, plugins = prepare("experiments/quickstart.yaml", ["seed=1"], [])
    run(cfg, plugins)

`prepare` loads the YAML, loads every plugin (built-in, installed, local
files), and binds each plugin reference's `args` to the plugin's signature,
so a typo fails in a second, before any model is built.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlkit.core import config as config_lib
from rlkit.core.config import stages_to_run
from rlkit.core.errors import RlkitError
from rlkit.core.plugins import Plugins, bind_args, load_plugins
from rlkit.core.textdata import check_source

# stage key -> plugin kind, for every plugin reference a stage may hold
PLUGIN_FIELDS = {"optimizer": "optimizer", "task": "task", "tasks": "task", "algorithm": "algorithm",
                 "rewards": "reward", "eval_reward": "reward", "eval.reward": "reward"}


def prepare(path: str | Path, overrides: list[str], extra_plugins: list[Path],
            world_size: int | None = None) -> tuple[DictConfig, Plugins]:
    """Load and validate the experiment and its plugins for `world_size` processes (default: torchrun's
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
    for stage in stages_to_run(cfg):
        check_stage_plugins(cfg.stages[stage], f"{path}: stages.{stage}", plugins)
    check_values(cfg, path)
    for stage in stages_to_run(cfg):  # a missing local data file fails now, not when its stage starts
        source = OmegaConf.select(cfg.stages[stage], "data.source")
        if source is not None:
            check_source(source, plugins.tables["task"], base_dir, f"{path}: stages.{stage}.data.source")
    check_algorithm(cfg, plugins, path)
    check_optimizers(cfg, plugins, path)
    world = world_size or int(os.environ.get("WORLD_SIZE", 1))
    check_batches(cfg, world, path)
    return cfg, plugins


def check_stage_plugins(stage_cfg: DictConfig, where: str, plugins: Plugins) -> None:
    """Every plugin reference in a stage names a known plugin and passes args it accepts."""
    for key, kind in PLUGIN_FIELDS.items():
        refs = OmegaConf.select(stage_cfg, key)
        if refs is None:
            continue
        items = [(f"{where}.{key}", refs)] if not OmegaConf.is_list(refs) else \
            [(f"{where}.{key}[{i}]", r) for i, r in enumerate(refs)]
        for at, ref in items:
            fn = plugins.get(kind, ref.name, f"{at}.name")
            bind_args(kind, ref.name, fn, ref.args, f"{at}.args")
    data = stage_cfg.get("data")
    if data is not None and data.source in plugins.tables["task"]:  # text from a task
        bind_args("task", data.source, plugins.tables["task"][data.source], data.args, f"{where}.data.args")


CHOICES = {"device": ("auto", "cpu", "cuda", "mps"), "model.dtype": ("auto", "float32", "bfloat16"),
           "model.compile": ("auto", "true", "false")}
POSITIVE = ("model.depth", "model.seq_len", "stages.tokenizer.vocab_size", "stages.rl.rollout.samples",
            "stages.rl.rollout.max_new_tokens", "stages.rl.eval.k") + tuple(
    f"stages.{stage}.{key}" for stage in ("pretrain", "midtrain", "sft", "rl")
    for key in ("steps", "device_batch_size", "total_batch_tokens", "examples_per_step"))
NON_NEGATIVE = ("stages.rl.rollout.temperature", "stages.rl.rollout.top_k", "stages.rl.init_lr_frac",
                "stages.sft.init_lr_frac", "stages.midtrain.init_lr_frac")


def check_values(cfg: DictConfig, path) -> None:
    """Out-of-range values fail before any work, naming the key and what is valid."""
    for key, valid in CHOICES.items():
        value = str(OmegaConf.select(cfg, key)).lower()
        if value not in valid:
            raise RlkitError(f"{path}: {key}: '{value}' is not valid (valid: {', '.join(valid)})")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise RlkitError(f"{path}: {key}: {value} must be at least 1")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 0:
            raise RlkitError(f"{path}: {key}: {value} must not be negative")


def check_algorithm(cfg: DictConfig, plugins: Plugins, path) -> None:
    """Build the RL algorithm once (cheap, no model) so its own checks and `min_samples` apply up front."""
    rl = cfg.stages.get("rl")
    if rl is None:
        return
    factory = plugins.get("algorithm", rl.algorithm.name, f"{path}: stages.rl.algorithm.name")
    try:
        algorithm = factory(**OmegaConf.to_container(rl.algorithm.args))
    except RlkitError:
        raise
    except Exception as e:
        raise RlkitError(f"{path}: stages.rl.algorithm: plugin '{rl.algorithm.name}' failed: "
                         f"{type(e).__name__}: {e}") from e
    need = getattr(algorithm, "min_samples", 1)
    if rl.rollout.samples < need:
        raise RlkitError(f"{path}: stages.rl.rollout.samples: algorithm '{rl.algorithm.name}' needs at least "
                         f"{need} samples per prompt (got {rl.rollout.samples})")


def check_optimizers(cfg: DictConfig, plugins: Plugins, path) -> None:
    """Build each stage's optimizer once on a tiny stand-in model, so values it refuses (a negative learning
    rate, say) fail up front; other failures (it needs a GPU or a process group) wait for the real model."""
    import torch

    from rlkit.core.model import GPT, GPTConfig

    stand_in = None
    for name in stages_to_run(cfg):
        ref = cfg.stages[name].get("optimizer")
        if ref is None:
            continue
        factory = plugins.get("optimizer", ref.name, f"{path}: stages.{name}.optimizer.name")
        with torch.random.fork_rng(devices=[]):  # leaves the run's random state as it was
            stand_in = stand_in or GPT(GPTConfig(depth=1, vocab_size=64, seq_len=16))
            try:
                factory(stand_in, **OmegaConf.to_container(ref.args))
            except (RlkitError, ValueError, TypeError) as e:
                raise RlkitError(f"{path}: stages.{name}.optimizer.args: {e}") from e
            except Exception:  # noqa: BLE001 -- not about the values: the stage reports it with the real model
                pass


def check_batches(cfg: DictConfig, world: int, path) -> None:
    """Global batch sizes must split evenly over `world` processes; say which values fit."""
    st, seq_len = cfg.stages, cfg.model.seq_len
    for name in ("pretrain", "midtrain"):
        s = st.get(name)
        if s is not None and s.total_batch_tokens % (unit := s.device_batch_size * seq_len * world):
            raise RlkitError(f"{path}: stages.{name}.total_batch_tokens: {s.total_batch_tokens} must be a multiple "
                             f"of device_batch_size x seq_len x processes = {s.device_batch_size} x {seq_len} x "
                             f"{world} = {unit} (e.g. {unit}, {2 * unit}, {4 * unit})")
    if st.get("sft") is not None and st.sft.examples_per_step % (unit := st.sft.device_batch_size * world):
        raise RlkitError(f"{path}: stages.sft.examples_per_step: {st.sft.examples_per_step} must be a multiple of "
                         f"device_batch_size x processes = {st.sft.device_batch_size} x {world} = {unit} "
                         f"(e.g. {unit}, {2 * unit}, {4 * unit})")
    if st.get("rl") is not None and st.rl.examples_per_step % world:
        raise RlkitError(f"{path}: stages.rl.examples_per_step: {st.rl.examples_per_step} must be a multiple of "
                         f"the number of processes ({world}), e.g. {world}, {2 * world}, {4 * world}")


def run(cfg: DictConfig, plugins: Plugins, resume: bool = False) -> None:
    """Run the configured stages in order, each starting from the previous one's checkpoint."""
    import importlib
    import time

    from rlkit.core import dist, interrupt, report, track
    from rlkit.core.context import StageContext, stage_done

    info, device = dist.init(cfg.device)
    dtype = dist.compute_dtype(cfg.model.dtype, device)
    run_dir = Path(cfg.run_dir)
    _check_run_dir(run_dir, cfg, resume)
    tracker = track.open_run(cfg, run_dir, info, resume)
    env, began = track.environment(device, dtype, info.world_size), time.time()
    interrupt.install()
    try:
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, run_dir / "config.yaml")
        tracker.params({"hparams": OmegaConf.to_container(cfg), "env": env})
        dist.print0(f"rlkit: {cfg.name}: stages {', '.join(stages_to_run(cfg))} on {device} ({dtype}), "
                    f"world size {info.world_size}, run dir {run_dir}")
        for name in stages_to_run(cfg):
            if resume and stage_done(run_dir, name):
                dist.print0(f"[{name}] already finished: skipping (--resume)")
                continue
            ctx = StageContext(cfg, name, plugins, run_dir, device, dtype, info, tracker, resume=resume)
            dist.seed_everything(ctx.seed())
            start = time.time()
            importlib.import_module(f"rlkit.core.stages.{name}").run(ctx)
            seconds = time.time() - start
            dist.print0(f"[{name}] done in {seconds:.1f}s")
            report.stage_done(ctx, seconds, env)  # report.md after every stage
        report.run_done(cfg, run_dir, tracker, env, time.time() - began)
        dist.barrier()  # leave together: a rank tearing down gloo while a peer is still busy can abort
    finally:
        interrupt.uninstall()
        tracker.close()
        dist.shutdown()


def _check_run_dir(run_dir: Path, cfg: DictConfig, resume: bool) -> None:
    """Never overwrite a run by accident, and resume only the run that was started."""
    saved = run_dir / "config.yaml"
    holds_work = (run_dir / "tokenizer").is_dir() or any(run_dir.glob("*/step_*"))
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
