"""A training stage's session: its model, tokenizer and optimizer, resumed or fresh, and its checkpoints.

    session = ctx.session(start, cfg.optimizer)  # resume point -> model -> optimizer (None: none) -> its state
    train = session.begin()                     # the saved random state back (--resume), then compile and DDP
    for step in range(session.start_step, cfg.steps):
        ...                                     # forward/backward on `train`, optimizer.step()
        session.end_step(step + 1, extra)       # the save_every checkpoint, then a requested stop
        # inside a long step, after each micro-batch: session.stop_mid_step("pass 3 of 32")
    return session.save(cfg.steps, extra, done=True)   # the handle the next entry starts from

The model comes from this entry's own newest checkpoint under --resume, else from `start`, else is
built fresh from `model:` and the seed. The resumed checkpoint's meta is read once, when it is found;
`session.extra` holds what the stage saved besides the core's keys ({} when fresh), and a stage restores
its own state from it (the rl stage its algorithm's).

Ctrl-C inside a step: `stop_mid_step` drops the step in progress (its gradients; nothing changed the
weights or the optimizer yet) and saves the last finished step as end_step would have, with the extra
and the random state of that moment, so a resumed run computes what an uninterrupted one would.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from rlkit.core import interrupt, policy, rng
from rlkit.core.dist import barrier, print0
from rlkit.core.errors import RlkitError
from rlkit.core.handoff import Checkpoint

if TYPE_CHECKING:
    from rlkit.core.context import StageContext

CORE_KEYS = ("stage", "step", "done", "model", "tokenizer", "rng", "saved_at", "checkpoint")  # the rest: extra


@dataclass(frozen=True)
class Origin:
    """What a checkpoint records about the model it holds: its model plugin and rlkit tokenizer folder."""
    model_name: str
    tokenizer: Path | None


class Session:
    """One training entry's model, optimizer and resume state (see the module docstring)."""

    def __init__(self, ctx: StageContext, start: Checkpoint | None, optimizer_ref):
        self.ctx = ctx
        self.resumed = ctx.resume_point()  # this entry's own newest checkpoint under --resume, its meta read
        self.model, self.tokenizer, self.origin = load_model(ctx, self.resumed or start)
        self.optimizer = None if optimizer_ref is None else ctx.optimizer(optimizer_ref, self.model)
        self.parallel, self.sharded = ctx.parallel, ctx.parallel.sharded  # how the model spans the ranks
        self.gathered = None  # a sharded model's full-weight copy for rollouts (begin)
        meta = self.resumed.meta if self.resumed else {}
        if self.resumed is not None:
            if not self.sharded and self.optimizer is not None:  # sharded: in begin()
                self.parallel.load_optimizer(self.resumed.path, self.model, self.optimizer, not self.resumed.verified)
            print0(f"[{ctx.name}] resuming at step {meta['step']}")
        self.start_step: int = meta.get("step", 0)
        self.extra: dict = {k: v for k, v in meta.items() if k not in CORE_KEYS}
        self.finished: tuple[int, dict, dict | None] = (self.start_step, self.extra, None)  # for stop_mid_step

    def begin(self, compile: bool = True, dynamic: bool = False, rollouts: bool = False) -> torch.nn.Module:
        """The model to train: the saved random state comes back first (--resume; last thing before the loop,
        so what the stage drew before it on the first run, a reference model's init say, shifts nothing), then
        the parallel strategy (ctx.parallel, rlkit.core.parallelism): fsdp shards the model in place
        (`rollouts`: keeping a copy in the compute dtype for sampling, see `sampler`), and the optimizer
        follows it; then torch.compile per `model.compile` (dynamic: one graph for batches of varying
        length), then DDP unless the model is sharded."""
        if self.resumed is not None:
            rng.set_rng_state(self.resumed.meta["rng"])
        self.finished = (self.start_step, copy.deepcopy(self.extra), rng.rng_state())
        self.gathered = self.parallel.prepare(self.model, self.optimizer, self.ctx.dtype, rollouts)
        if self.resumed is not None and self.sharded and self.optimizer is not None:
            self.parallel.load_optimizer(self.resumed.path, self.model, self.optimizer, not self.resumed.verified)
        model = maybe_compile(self.ctx, self.model, dynamic) if compile else self.model
        return model if self.sharded else self.ctx.runtime.ddp(model)

    def sampler(self, step: int | None = None) -> torch.nn.Module:
        """The model for rollouts and evaluation: the training model itself, or under fsdp its full-weight
        copy, all-gathered now (every rank must call; the seconds it took are tracked as gather_s)."""
        if self.gathered is None:
            return self.model
        t0 = time.perf_counter()
        model = self.gathered.refresh(self.model)
        self.ctx.tracker.metrics({"gather_s": time.perf_counter() - t0}, step=step, stage=self.ctx.name)
        return model

    def save(self, step: int, extra: dict, done: bool = False, rng_state: dict | None = None) -> Checkpoint:
        return save(self.ctx, self.origin, step, self.model, self.optimizer, extra, done, rng_state)

    def end_step(self, done: int, extra: dict) -> None:
        """After step `done`: the `save_every` checkpoint (the last step's is the stage's own, saved as done),
        then, on Ctrl-C/SIGTERM on any rank, this step's checkpoint and a stop with the resume command."""
        cfg = self.ctx.cfg
        every = getattr(cfg, "save_every", 0)
        if every and done % every == 0 and done != cfg.steps:
            self.save(done, extra)
        if interrupt.stop_requested(self.ctx.device):
            handle = self.save(done, extra)
            raise interrupt.Interrupted(f"stopped at {self.ctx.name} step {done}; saved {handle.path}")
        self.finished = (done, copy.deepcopy(extra), rng.rng_state())

    def stop_mid_step(self, where: str) -> None:
        """Inside a step, after a micro-batch or a phase (`where`, e.g. "pass 3 of 32"): on Ctrl-C/SIGTERM on
        any rank, drop the step in progress, save the last finished one (see the top) and stop."""
        if not interrupt.stop_requested(self.ctx.device):
            return
        done, extra, state = self.finished
        now = f"stopped during {self.ctx.name} step {done + 1} ({where}); that step is dropped"
        if done == self.start_step:  # fresh, or this entry's newest checkpoint is that step
            raise interrupt.Interrupted(f"{now}, and no step finished since the start: nothing new to save")
        handle = self.save(done, extra, rng_state=state)
        raise interrupt.Interrupted(f"{now}; saved the last finished step, {done}: {handle.path}")


def maybe_compile(ctx: StageContext, model: torch.nn.Module, dynamic: bool = False) -> torch.nn.Module:
    """torch.compile the training forward per `model.compile`: auto compiles on CUDA only (on a CPU the
    compile time outweighs the gain for the minutes-long runs rlkit makes there)."""
    choice = str(ctx.experiment.model.compile).lower()
    if choice == "false" or (choice == "auto" and ctx.device.type != "cuda"):
        return model
    return torch.compile(model, dynamic=dynamic)


def load_model(ctx: StageContext, start: Checkpoint | None) -> tuple[torch.nn.Module, object, Origin]:
    """(model on device, tokenizer, origin): the weights of `start`, else a new model from `model:` and the seed."""
    mc, tokenizer_dir = ctx.experiment.model, start.tokenizer if start is not None else None
    args = OmegaConf.to_container(mc.args)
    if start is None or start.path is None:
        tokenizer = policy.load_tokenizer(ctx.plugins, tokenizer_dir, "model") if tokenizer_dir is not None else None
        name = mc.name or policy.model_name(ctx.plugins, None, args, "model")
        torch.manual_seed(ctx.experiment.seed)  # one seed, one init, whatever the entry
        model, tokenizer = policy.build(ctx.plugins, name, args, tokenizer, mc.seq_len, "model")
        print0(f"[{ctx.name}] new {name} model: {sum(p.numel() for p in model.parameters()):,} parameters")
        return model.to(ctx.device), tokenizer, Origin(name, tokenizer_dir)
    name, spec = start.model["name"], start.model["args"]
    key = f"stages.{ctx.name}.init" if ctx.init else "model"
    if mc.name not in (None, name):
        raise RlkitError(f"{key}: checkpoint {start.path} holds a {name} model but model.name is "
                         f"{mc.name}; set model.name={name} or start from a matching checkpoint")
    for k, v in args.items():
        if k in spec and policy.differs(spec[k], v):
            raise RlkitError(f"{key}: checkpoint {start.path} holds a {name} model with {k}={spec[k]} "
                             f"but model.{k} is {v}; set model.{k}={spec[k]} or start from a matching checkpoint")
    model, tokenizer = policy.load(ctx.plugins, start, mc.seq_len, key, ctx.device)
    own = start.path.parent == ctx.stage_dir  # this entry's own checkpoint: --resume
    print0(f"[{ctx.name}] {'resuming from' if own else 'starting from'} {start.path}")
    return model, tokenizer, Origin(name, tokenizer_dir)


def save(ctx: StageContext, origin: Origin, step: int, model, optimizer, extra: dict, done: bool,
         rng_state: dict | None = None) -> Checkpoint:
    """Every rank writes this entry's atomic checkpoint through ctx.parallel (under ddp rank 0 alone) and gets
    its handle. `rng_state`: the random state to record (default: the present one)."""
    step_dir = ctx.stage_dir / f"step_{step:06d}"
    handle = Checkpoint(step_dir, {"name": origin.model_name, "args": model.spec(), "seq_len": ctx.seq_len},
                        origin.tokenizer)
    record = handle.record(step_dir)
    meta = {"stage": ctx.name, "step": step, "done": done, "model": record["model"], "tokenizer": record["tokenizer"],
            "rng": rng_state or rng.rng_state(), "saved_at": time.time(), **extra}
    ctx.parallel.save(ctx.stage_dir, step, model, optimizer, meta)
    barrier()  # the next entry on every rank reads what rank 0 writes
    return handle
