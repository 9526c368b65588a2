"""What a stage's run(ctx, start) gets: runtime services, nothing about any particular stage.

    def run(ctx: StageContext[MyConfig], start: Checkpoint | None) -> Checkpoint:
        session = ctx.session(start, ctx.cfg.optimizer)   # model, tokenizer, optimizer; resumed or fresh
        ...
        return session.save(step, extra, done=True)       # the handle the next entry starts from

A stage that trains nothing may return `start`. `ctx.runtime` is the part library functions take
(device, dtype, ranks, tracker, plugins, seed). The methods below the line "the pre-session contract"
keep stages written against the older context working (resume_point, load_model, restore, save, ...).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from omegaconf import DictConfig

from rlkit.core import checkpoint as ckpt
from rlkit.core import interrupt, rng, session
from rlkit.core.dist import DistInfo, print0
from rlkit.core.errors import RlkitError
from rlkit.core.handoff import Checkpoint
from rlkit.core.parallelism import Parallelism
from rlkit.core.plugins import Plugins, call_plugin, check_examples
from rlkit.core.runtime import Runtime

Cfg = TypeVar("Cfg")


@dataclass
class StageContext(Generic[Cfg]):
    name: str  # this entry's name: its folder runs/<name>/<entry>, its Aim context, its report section
    cfg: Cfg  # this entry's typed config (its stage's dataclass)
    experiment: DictConfig  # the whole resolved experiment (seed, model, ...)
    index: int  # the entry's position in the YAML order
    plugins: Plugins
    run_dir: Path
    device: torch.device
    dtype: torch.dtype  # compute dtype for autocast
    dist: DistInfo
    tracker: Any  # rlkit.core.track.Tracker
    resume: bool = False  # --resume: a session starts from this entry's own newest checkpoint
    summary: dict = field(default_factory=dict)  # what the stage reports at its end (report card)
    init: str | None = None  # the entry's `init:`, if it has one (named in errors about its start)
    start_path: Path | None = None  # the checkpoint the entry started from (named when a step fails)
    parallel: Parallelism = field(default_factory=Parallelism)  # how the training model spans the ranks

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def base_dir(self) -> Path:
        return Path(self.experiment.base_dir)

    @property
    def seq_len(self) -> int:
        return self.experiment.model.seq_len

    @property
    def runtime(self) -> Runtime:
        """What library functions take: device, dtype, ranks, tracker, plugins, this entry's seed, the strategy."""
        return Runtime(self.name, self.device, self.dtype, self.dist, self.tracker, self.plugins, self.seed(),
                       self.parallel)

    def seed(self, offset: int = 0) -> int:
        """This entry's seed, from the experiment's one seed and the entry's position (entry i gets
        seed * 1000 + 100 * (i - 1): the first build's seeds for tokenizer, pretrain, ..., rl)."""
        return entry_seed(self.experiment.seed, self.index) + offset

    def autocast(self):
        """bf16 autocast when the compute dtype is bf16; a no-op context in fp32."""
        return self.runtime.autocast()

    def session(self, start: Checkpoint | None, optimizer_ref) -> session.Session:
        """A training session: resume point, model, optimizer and restored state (rlkit.core.session)."""
        return session.Session(self, start, optimizer_ref)

    # --- plugins -----------------------------------------------------------
    def plugin(self, kind: str, ref):
        """The plugin callable for a {name, args} reference, its args bound (they were checked up front)."""
        fn = self.plugins.get(kind, ref.name, f"stages.{self.name}")
        return functools.partial(fn, **ref.args) if ref.args else fn

    def call(self, key: str, kind: str, ref, *args):
        """Call a plugin factory (a task, an optimizer, an algorithm); its failure becomes one line naming `key`."""
        return call_plugin(f"stages.{self.name}.{key}", ref.name, self.plugin(kind, ref), *args)

    def task(self, ref, split: str, key: str = "task"):
        """A task plugin's examples for `split`; an empty task is a user error."""
        task = self.call(key, "task", ref, split)
        if len(task) == 0:
            raise RlkitError(f"stages.{self.name}.{key}: task '{ref.name}' has no {split} examples")
        check_examples(task, f"stages.{self.name}.{key}: task '{ref.name}' ({split})")
        return task

    def optimizer(self, ref, model: torch.nn.Module) -> torch.optim.Optimizer:
        optimizer = self.call("optimizer", "optimizer", ref, model)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise RlkitError(f"stages.{self.name}.optimizer: plugin '{ref.name}' returned {type(optimizer).__name__}; "
                             "an optimizer factory must return a torch.optim.Optimizer")
        for group in optimizer.param_groups:
            if "initial_lr" not in group:
                raise RlkitError(f"optimizer plugin '{ref.name}': every param group needs 'initial_lr'")
        return optimizer

    def resume_point(self) -> Checkpoint | None:
        """Under --resume, this entry's own newest whole checkpoint (only its own folder is looked in)."""
        found = ckpt.latest_checkpoint(self.stage_dir, warn=print0) if self.resume else None
        return None if found is None else Checkpoint.from_step(found, f"stages.{self.name}", verified=True)

    # --- the pre-session contract: stages that load, restore and save step by step ----------------
    def load_model(self, start: Checkpoint | None):
        """(model, tokenizer) of `start` (or new); remembers what save() records with the weights."""
        model, tokenizer, self._origin = session.load_model(self, start)
        return model, tokenizer

    def restore(self, resume: Checkpoint | None, optimizer, algorithm=None) -> dict:
        """Optimizer, RNG and (an object with load_state_dict) algorithm state; the resume's meta ({} if none)."""
        if resume is None:
            return {}
        meta = {k: v for k, v in (resume.meta or Checkpoint.from_step(resume.path).meta).items() if k != "checkpoint"}
        state = ckpt.read_optimizer(resume.path, verify=not resume.verified)
        if optimizer is not None and state is not None:
            optimizer.load_state_dict(state)
        rng.set_rng_state(meta["rng"])
        if algorithm is not None and "algorithm" in meta and hasattr(algorithm, "load_state_dict"):
            algorithm.load_state_dict(meta["algorithm"])
        print0(f"[{self.name}] resuming at step {meta['step']}")
        return meta

    def save(self, step: int, model, optimizer, extra: dict, done: bool = False) -> Checkpoint:
        """Rank 0 writes an atomic checkpoint of this entry (after load_model); every rank gets its handle."""
        if getattr(self, "_origin", None) is None:
            raise RlkitError(f"stages.{self.name}: ctx.save needs ctx.load_model first (or use ctx.session)")
        return session.save(self, self._origin, step, model, optimizer, extra, done)

    def stop_if_requested(self, step: int, model, optimizer, extra: dict) -> None:
        """On Ctrl-C/SIGTERM (any rank): save this step's checkpoint and stop with the resume command."""
        if interrupt.stop_requested(self.device):
            handle = self.save(step, model, optimizer, extra)
            raise interrupt.Interrupted(f"stopped at {self.name} step {step}; saved {handle.path}")

    def ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.runtime.ddp(model)

    def no_sync(self, model: torch.nn.Module, last: bool):
        return self.runtime.no_sync(model, last)

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return self.runtime.sum_over_ranks(t)

    def mean_over_ranks(self, t: torch.Tensor) -> float:
        return self.runtime.mean_over_ranks(t)


def entry_seed(seed: int, index: int) -> int:
    """The seed of the entry at position `index` of an experiment seeded `seed` (StageContext.seed)."""
    return seed * 1000 + 100 * (index - 1)
