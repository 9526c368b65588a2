"""What a stage gets: the config, the plugins, the device, the tracker, and the
few helpers every stage needs (its tokenizer, its model from the previous
stage's checkpoint, an optimizer from a plugin, saving and resuming).

A stage is a module in rlkit/core/stages with `run(ctx: StageContext)`; it
reads as one loop top to bottom and leaves bookkeeping to this file.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rlkit.core import checkpoint as ckpt
from rlkit.core import interrupt
from rlkit.core.dist import DistInfo, all_reduce_sum, barrier, print0
from rlkit.core.errors import RlkitError
from rlkit.core.model import GPT, GPTConfig
from rlkit.core.plugins import Plugins
from rlkit.core.tokenizer import Tokenizer

MODEL_STAGES = ("pretrain", "midtrain", "sft", "rl")


@dataclass
class StageContext:
    cfg: DictConfig  # the whole resolved experiment
    name: str  # this stage: tokenizer | pretrain | midtrain | sft | rl
    plugins: Plugins
    run_dir: Path
    device: torch.device
    dtype: torch.dtype  # compute dtype for autocast
    dist: DistInfo
    tracker: object  # AimTracker or NullTracker
    resume: bool = False
    summary: dict = field(default_factory=dict)  # what the stage reports at its end (report card)

    @property
    def stage(self) -> DictConfig:
        return self.cfg.stages[self.name]

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def base_dir(self) -> Path:
        return Path(self.cfg.base_dir)

    def autocast(self):
        """bf16 autocast when the compute dtype is bf16; a no-op context in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def seed(self, offset: int = 0) -> int:
        """A per-stage seed derived from the experiment's one seed."""
        return self.cfg.seed * 1000 + MODEL_STAGES.index(self.name) * 100 + offset if self.name in MODEL_STAGES \
            else self.cfg.seed

    # --- tokenizer ---------------------------------------------------------
    def tokenizer_dir(self) -> Path:
        """This run's tokenizer, else the one the `init:` checkpoint was trained with: the folder its meta names
        or, when that run folder was moved or copied, the `tokenizer` folder of the run it sits in."""
        own = self.run_dir / "tokenizer"
        start = None if own.is_dir() else self.init_checkpoint()
        if start is None:
            return own
        named = json.loads((start / "meta.json").read_text()).get("tokenizer_dir")
        beside = start.parent.parent / "tokenizer"  # <run>/<stage>/step_N -> <run>/tokenizer
        for candidate in ([Path(named)] if named else []) + [beside]:
            if candidate.is_dir():
                return candidate
        return Path(named) if named else own  # missing: Tokenizer.load names it

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_dir())

    # --- plugins -----------------------------------------------------------
    def plugin_fn(self, kind: str, ref: DictConfig):
        """The plugin callable for a {name, args} reference, with its args bound (args already validated)."""
        fn = self.plugins.get(kind, ref.name, f"stages.{self.name}")
        args = OmegaConf.to_container(ref.args)
        return functools.partial(fn, **args) if args else fn

    def task(self, ref: DictConfig, split: str):
        """A task plugin's examples for `split`; an empty task is a user error."""
        task = call_plugin(f"stages.{self.name}.task", ref.name, self.plugin_fn("task", ref), split)
        if len(task) == 0:
            raise RlkitError(f"stages.{self.name}.task: task '{ref.name}' has no {split} examples")
        return task

    # --- model -------------------------------------------------------------
    def init_checkpoint(self) -> Path | None:
        """Where this stage starts: its own `init:`, else the last checkpoint of the nearest earlier stage."""
        if self.stage.get("init"):
            path = Path(self.stage.init)  # a run output: relative to where rlkit runs, like run_dir
            found = ckpt.latest_checkpoint(path) if not (path / "meta.json").exists() else path
            if found is None:
                raise RlkitError(f"stages.{self.name}.init: no checkpoint at {path}")
            return found
        earlier = MODEL_STAGES[:MODEL_STAGES.index(self.name)]
        for stage in reversed(earlier):
            found = ckpt.latest_checkpoint(self.run_dir / stage, warn=print0)
            if found is not None:
                return found
        return None

    def build_model(self, vocab_size: int) -> GPT:
        """The model this stage trains, on device: from this stage's own last checkpoint (--resume), else
        from `init:` or the previous stage's last checkpoint, else freshly initialised from the seed."""
        own = ckpt.latest_checkpoint(self.stage_dir, warn=print0) if self.resume else None
        start = own or self.init_checkpoint()
        mc = self.cfg.model
        if start is None:
            config = GPTConfig(depth=mc.depth, vocab_size=vocab_size, seq_len=mc.seq_len)
            torch.manual_seed(self.cfg.seed)
            model = GPT(config)
            model.init_weights()
            print0(f"[{self.name}] new model: depth {config.depth}, width {config.width}, "
                   f"{sum(p.numel() for p in model.parameters()):,} parameters")
            return model.to(self.device)
        state, opt_state, meta = ckpt.load_checkpoint(start, load_optimizer=own is not None)
        config = GPTConfig(**{**meta["model_config"], "seq_len": mc.seq_len})
        key = f"stages.{self.name}.init" if self.stage.get("init") else "model.depth"
        if config.depth != mc.depth:
            raise RlkitError(f"{key}: checkpoint {start} holds a depth-{config.depth} model but model.depth is "
                             f"{mc.depth}; set model.depth={config.depth} or start from a matching checkpoint")
        if config.vocab_size != vocab_size:
            raise RlkitError(f"{key}: checkpoint {start} has vocab {config.vocab_size} but the tokenizer has "
                             f"{vocab_size}; they must come from the same run")
        model = GPT(config)
        model.load_state_dict(state)
        self._own_checkpoint = (opt_state, meta) if own is not None else None
        print0(f"[{self.name}] {'resuming from' if own else 'starting from'} {start}")
        return model.to(self.device)

    def restore(self, optimizer, algorithm=None) -> dict | None:
        """After build_model/build_optimizer on --resume: load the optimizer state, the RNG states and an
        algorithm's state from this stage's own checkpoint; returns its meta (step, data position), or None."""
        found = getattr(self, "_own_checkpoint", None)
        if found is None:
            return None
        opt_state, meta = found
        optimizer.load_state_dict(opt_state)
        ckpt.set_rng_state(meta["rng"])
        if algorithm is not None and "algorithm" in meta and hasattr(algorithm, "load_state_dict"):
            algorithm.load_state_dict(meta["algorithm"])
        print0(f"[{self.name}] resuming at step {meta['step']}")
        return meta

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        ref = self.stage.optimizer
        factory = self.plugins.get("optimizer", ref.name, f"stages.{self.name}.optimizer.name")
        optimizer = call_plugin(f"stages.{self.name}.optimizer", ref.name, factory, model,
                                **OmegaConf.to_container(ref.args))
        for group in optimizer.param_groups:
            if "initial_lr" not in group:
                raise RlkitError(f"optimizer plugin '{ref.name}': every param group needs 'initial_lr'")
        return optimizer

    def maybe_compile(self, model: torch.nn.Module, dynamic: bool = False):
        """torch.compile the training forward per `model.compile`: auto compiles on CUDA only (on a CPU
        the compile time outweighs the gain for the minutes-long runs rlkit makes there)."""
        choice = str(self.cfg.model.compile).lower()
        if choice not in ("auto", "true", "false"):
            raise RlkitError(f"model.compile: '{self.cfg.model.compile}' is not valid (valid: auto, true, false)")
        if choice == "false" or (choice == "auto" and self.device.type != "cuda"):
            return model
        return torch.compile(model, dynamic=dynamic)  # dynamic: one graph for batches of varying length

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

    # --- checkpoints -------------------------------------------------------
    def save(self, step: int, model: GPT, optimizer, extra: dict, done: bool = False) -> Path | None:
        """Rank 0 writes an atomic checkpoint of this stage; other ranks do nothing."""
        if not self.dist.is_main:
            barrier()  # the next stage on every rank reads what rank 0 writes
            return None
        meta = {"stage": self.name, "step": step, "done": done,
                "tokenizer_dir": str(self.tokenizer_dir()),  # relative to the working directory, like run_dir
                "model_config": dataclasses.asdict(model.config),
                "rng": ckpt.rng_state(), "saved_at": time.time(), **extra}
        state = {k: v.detach() for k, v in model.state_dict().items()}
        opt_state = optimizer.state_dict() if optimizer is not None else None
        path = ckpt.save_checkpoint(self.stage_dir, step, state, opt_state, meta)
        barrier()
        return path

    def log_step(self, done: int, meter, **values) -> None:
        """Every `log_every` steps and at the last: one console line and one tracked write of the step's
        values (loss, lr_mult, ...) plus tokens/s and MFU since the previous line."""
        s = self.stage
        if done % s.log_every and done != s.steps:
            return
        tok_s, mfu = meter.read()
        tok_s *= self.dist.world_size  # tokens/s of all ranks together; MFU stays per device
        print0(f"[{self.name}] step {done:5d}/{s.steps} | loss {values['loss']:.4f} | lr x{values['lr_mult']:.4f} | "
               f"{tok_s:,.0f} tok/s | MFU {mfu:.1%}")
        self.tracker.metrics({**values, "tokens_per_s": tok_s, "mfu": mfu}, step=done, stage=self.name)

    def end_step(self, done: int, model: GPT, optimizer, extra: dict) -> None:
        """After step `done`: the `save_every` checkpoint (the last step's is the stage's own, saved as done),
        then a requested stop."""
        every = self.stage.save_every
        if every and done % every == 0 and done != self.stage.steps:
            self.save(done, model, optimizer, extra)
        self.stop_if_requested(done, model, optimizer, extra)

    def stop_if_requested(self, step: int, model: GPT, optimizer, extra: dict) -> None:
        """On Ctrl-C/SIGTERM (any rank): save this step's checkpoint and stop with the resume command."""
        if not interrupt.stop_requested(self.device):
            return
        path = self.save(step, model, optimizer, extra)
        raise interrupt.Interrupted(f"stopped at {self.name} step {step}; saved {path or self.stage_dir}")

    def check_step(self, loss: float, gnorm: torch.Tensor, step: int) -> None:
        """Before optimizer.step(): a non-finite loss or gradient stops the run while the weights are still
        the last finite ones, so no checkpoint ever holds them. `loss` must be the same on every rank."""
        if not math.isfinite(loss):
            self.fail(f"loss became {loss}", step)
        if not math.isfinite(g := float(gnorm)):  # DDP has averaged the gradients: the same on every rank
            self.fail(f"the gradient norm became {g}", step)

    def fail(self, what: str, step: int) -> None:
        """Stop on a numerical failure, naming the step and the last good checkpoint, which stays as it was."""
        last = ckpt.latest_checkpoint(self.stage_dir, verify=False) or self.init_checkpoint()
        raise RlkitError(f"stages.{self.name}: {what} at step {step}; the last good checkpoint is "
                         f"{last or '(none yet)'}; lower the learning rate (optimizer args / init_lr_frac)")


def call_plugin(where: str, name: str, fn, *args, **kwargs):
    """Call a plugin's factory; an exception from it (bad arg values, missing data) becomes one line."""
    try:
        return fn(*args, **kwargs)
    except RlkitError as e:
        raise RlkitError(f"{where}: {e}") from e  # the plugin's own message, with the key it came from
    except Exception as e:
        raise RlkitError(f"{where}: plugin '{name}' failed: {type(e).__name__}: {e}") from e


def stage_done(run_dir: Path, name: str) -> bool:
    """Whether a stage finished in an earlier invocation of this run (used by --resume)."""
    if name == "tokenizer":
        return (run_dir / "tokenizer").is_dir() and any((run_dir / "tokenizer").iterdir())
    found = ckpt.latest_checkpoint(run_dir / name, warn=lambda _: None)  # a damaged last one: not done
    return found is not None and json.loads((found / "meta.json").read_text()).get("done", False)
