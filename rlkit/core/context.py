"""What a stage's run(ctx, start) gets: runtime services, nothing about any particular stage.

    resume = ctx.resume_point()                        # this entry's own last checkpoint (--resume)
    model, tokenizer = ctx.load_model(resume or start)  # from a checkpoint, else a fresh model
    optimizer = ctx.optimizer(cfg.optimizer, model)
    meta = ctx.restore(resume, optimizer)              # optimizer, RNG and algorithm state; {} if new
    ...
    return ctx.save(step, model, optimizer, extra, done=True)   # the handle the next entry starts from

The loop helpers that stages share (log line, checks before the update, save_every) are in
rlkit.lib.training.loop.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rlkit.core import checkpoint as ckpt
from rlkit.core import interrupt, policy, rng
from rlkit.core.dist import DistInfo, all_reduce_sum, barrier, print0
from rlkit.core.errors import RlkitError
from rlkit.core.handoff import Checkpoint
from rlkit.core.plugins import Plugins
from rlkit.core.tokenizer import Tokenizer


@dataclass
class StageContext:
    name: str  # this entry's name: its folder runs/<name>/<entry>, its Aim context, its report section
    cfg: Any  # this entry's typed config (its stage's dataclass)
    experiment: DictConfig  # the whole resolved experiment (seed, model, ...)
    index: int  # the entry's position in the YAML order
    plugins: Plugins
    run_dir: Path
    device: torch.device
    dtype: torch.dtype  # compute dtype for autocast
    dist: DistInfo
    tracker: Any  # rlkit.core.track.Tracker
    resume: bool = False
    summary: dict = field(default_factory=dict)  # what the stage reports at its end (report card)
    init: str | None = None  # the entry's `init:`, if it has one (named in errors about its start)
    start_path: Path | None = None  # the checkpoint the entry started from (named when a step fails)
    model_name: str | None = None  # set by load_model: what save() records with the weights
    tokenizer_dir: Path | None = None  # set by load_model: the rlkit tokenizer folder, if one is used

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def base_dir(self) -> Path:
        return Path(self.experiment.base_dir)

    @property
    def seq_len(self) -> int:
        return self.experiment.model.seq_len

    def seed(self, offset: int = 0) -> int:
        """This entry's seed, from the experiment's one seed and the entry's position (entry i gets
        seed * 1000 + 100 * (i - 1): the first build's seeds for tokenizer, pretrain, ..., rl)."""
        return entry_seed(self.experiment.seed, self.index) + offset

    def autocast(self):
        """bf16 autocast when the compute dtype is bf16; a no-op context in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

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

    # --- model and checkpoints ---------------------------------------------
    def resume_point(self) -> Checkpoint | None:
        """Under --resume, this entry's own newest whole checkpoint (only its own folder is looked in)."""
        found = ckpt.latest_checkpoint(self.stage_dir, warn=print0) if self.resume else None
        return None if found is None else Checkpoint.from_step(found, f"stages.{self.name}", verified=True)

    def load_model(self, start: Checkpoint | None):
        """(model on device, tokenizer): the weights of `start`, else a new model from `model:` and the seed."""
        mc, where = self.experiment.model, f"stages.{self.name}"
        self.tokenizer_dir = start.tokenizer if start is not None else None
        args = OmegaConf.to_container(mc.args)
        if start is None or start.path is None:
            tokenizer = Tokenizer.load(self.tokenizer_dir) if self.tokenizer_dir is not None else None
            self.model_name = mc.name or policy.model_name(self.plugins, None, args, "model")
            torch.manual_seed(self.experiment.seed)  # one seed, one init, whatever the entry
            model, tokenizer = policy.build(self.plugins, self.model_name, args, tokenizer, mc.seq_len, "model")
            print0(f"[{self.name}] new {self.model_name} model: {sum(p.numel() for p in model.parameters()):,} "
                   "parameters")
            return model.to(self.device), tokenizer
        self.model_name, spec = start.model["name"], start.model["args"]
        key = f"{where}.init" if self.init else "model"
        if mc.name not in (None, self.model_name):
            raise RlkitError(f"{key}: checkpoint {start.path} holds a {self.model_name} model but model.name is "
                             f"{mc.name}; set model.name={self.model_name} or start from a matching checkpoint")
        for k, v in args.items():
            if k in spec and policy.differs(spec[k], v):
                raise RlkitError(f"{key}: checkpoint {start.path} holds a {self.model_name} model with {k}={spec[k]} "
                                 f"but model.{k} is {v}; set model.{k}={spec[k]} or start from a matching checkpoint")
        model, tokenizer = policy.load(self.plugins, start, mc.seq_len, key, self.device)
        own = start.path.parent == self.stage_dir  # this entry's own checkpoint: --resume
        print0(f"[{self.name}] {'resuming from' if own else 'starting from'} {start.path}")
        return model, tokenizer

    def restore(self, resume: Checkpoint | None, optimizer, algorithm=None) -> dict:
        """From this entry's own checkpoint: optimizer, RNG and algorithm state; returns its meta ({} if none)."""
        if resume is None:
            return {}
        _, opt_state, meta = ckpt.load_checkpoint(resume.path, load_model=False, verify=not resume.verified)
        if optimizer is not None and opt_state is not None:
            optimizer.load_state_dict(opt_state)
        rng.set_rng_state(meta["rng"])
        if algorithm is not None and "algorithm" in meta and hasattr(algorithm, "load_state_dict"):
            algorithm.load_state_dict(meta["algorithm"])
        print0(f"[{self.name}] resuming at step {meta['step']}")
        return meta

    def save(self, step: int, model, optimizer, extra: dict, done: bool = False) -> Checkpoint:
        """Rank 0 writes an atomic checkpoint of this entry; every rank gets its handle."""
        step_dir = self.stage_dir / f"step_{step:06d}"
        record = {"name": self.model_name, "args": model.spec(), "seq_len": self.seq_len}
        handle = Checkpoint(step_dir, record, self.tokenizer_dir)
        if self.dist.is_main:
            record = handle.record(step_dir)
            meta = {"stage": self.name, "step": step, "done": done, "model": record["model"],
                    "tokenizer": record["tokenizer"], "rng": rng.rng_state(), "saved_at": time.time(), **extra}
            state = {k: v.detach() for k, v in model.state_dict().items()}
            opt_state = optimizer.state_dict() if optimizer is not None else None
            ckpt.save_checkpoint(self.stage_dir, step, state, opt_state, meta)
        barrier()  # the next entry on every rank reads what rank 0 writes
        return handle

    # --- distributed -------------------------------------------------------
    def ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap in DistributedDataParallel under torchrun (gradients averaged over ranks); as is otherwise."""
        if not self.dist.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module, last: bool):
        """Skip DDP's gradient all-reduce on every accumulation pass but the last."""
        if last or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t.clone())

    def mean_over_ranks(self, t: torch.Tensor) -> float:
        return all_reduce_sum(t.detach().clone().float()).item() / self.dist.world_size

    def stop_if_requested(self, step: int, model, optimizer, extra: dict) -> None:
        """On Ctrl-C/SIGTERM (any rank): save this step's checkpoint and stop with the resume command."""
        if not interrupt.stop_requested(self.device):
            return
        handle = self.save(step, model, optimizer, extra)
        raise interrupt.Interrupted(f"stopped at {self.name} step {step}; saved {handle.path}")


def entry_seed(seed: int, index: int) -> int:
    """The seed of the entry at position `index` of an experiment seeded `seed` (StageContext.seed)."""
    return seed * 1000 + 100 * (index - 1)


def check_examples(task, where: str) -> None:
    """Every example must hold what stages read: "messages", a list of {"role", "content": str}; checked
    when the task is built, so a bad row deep in the data is one line before any work, not a traceback later."""
    for i in range(len(task)):
        example = task[i]
        messages = example.get("messages") if isinstance(example, dict) else None
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in messages)):
            raise RlkitError(f"{where}: example {i} is {str(example)[:80]!r}; an example is a dict with \"messages\": "
                             "[{\"role\": \"user\" | \"assistant\", \"content\": str}, ...] (see make_example)")


def call_plugin(where: str, name: str, fn, *args, **kwargs):
    """Call a plugin's factory; an exception from it (bad arg values, missing data) becomes one line."""
    try:
        return fn(*args, **kwargs)
    except RlkitError as e:
        raise RlkitError(f"{where}: {e}") from e  # the plugin's own message, with the key it came from
    except Exception as e:
        raise RlkitError(f"{where}: plugin '{name}' failed: {type(e).__name__}: {e}") from e
