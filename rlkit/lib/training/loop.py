"""Helpers every training loop shares: compile, the step line, the checks before an update, save_every.

They read the entry's `steps`, `log_every` and `save_every` from its config, so a stage that uses
them declares those keys.
"""
from __future__ import annotations

import math

import torch

from rlkit.core import checkpoint as ckpt
from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError


def maybe_compile(ctx, model: torch.nn.Module, dynamic: bool = False):
    """torch.compile the training forward per `model.compile`: auto compiles on CUDA only (on a CPU
    the compile time outweighs the gain for the minutes-long runs rlkit makes there)."""
    choice = str(ctx.experiment.model.compile).lower()
    if choice == "false" or (choice == "auto" and ctx.device.type != "cuda"):
        return model
    return torch.compile(model, dynamic=dynamic)  # dynamic: one graph for batches of varying length


def log_step(ctx, done: int, meter, **values) -> None:
    """Every `log_every` steps and at the last: one console line and one tracked write of the step's
    values (loss, lr_mult, ...) plus tokens/s and MFU since the previous line."""
    s = ctx.cfg
    if done % s.log_every and done != s.steps:
        return
    tok_s, mfu = meter.read()
    tok_s *= ctx.dist.world_size  # tokens/s of all ranks together; MFU stays per device
    print0(f"[{ctx.name}] step {done:5d}/{s.steps} | loss {values['loss']:.4f} | lr x{values['lr_mult']:.4f} | "
           f"{tok_s:,.0f} tok/s | MFU {mfu:.1%}")
    ctx.tracker.metrics({**values, "tokens_per_s": tok_s, "mfu": mfu}, step=done, stage=ctx.name)


def end_step(ctx, done: int, model, optimizer, extra: dict) -> None:
    """After step `done`: the `save_every` checkpoint (the last step's is the stage's own, saved as done),
    then a requested stop."""
    every = ctx.cfg.save_every
    if every and done % every == 0 and done != ctx.cfg.steps:
        ctx.save(done, model, optimizer, extra)
    ctx.stop_if_requested(done, model, optimizer, extra)


def check_step(ctx, loss: float, gnorm: torch.Tensor, step: int) -> None:
    """Before optimizer.step(): a non-finite loss or gradient stops the run while the weights are still
    the last finite ones, so no checkpoint ever holds them. `loss` must be the same on every rank."""
    if not math.isfinite(loss):
        fail(ctx, f"loss became {loss}", step)
    if not math.isfinite(g := float(gnorm)):  # DDP has averaged the gradients: the same on every rank
        fail(ctx, f"the gradient norm became {g}", step)


def fail(ctx, what: str, step: int) -> None:
    """Stop on a numerical failure, naming the step and the last good checkpoint, which stays as it was."""
    last = ckpt.latest_checkpoint(ctx.stage_dir, verify=False) or ctx.start_path
    raise RlkitError(f"stages.{ctx.name}: {what} at step {step}; the last good checkpoint is "
                     f"{last or '(none yet)'}; lower the learning rate (optimizer args / init_lr_frac)")
