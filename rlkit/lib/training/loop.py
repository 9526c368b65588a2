"""Helpers every training loop shares: the step line, the gradient norm, the checks before an update.

They read the entry's `steps`, `log_every` and `save_every` from its config, so a stage that uses
them declares those keys. Loading, resuming, compiling and saving are the session's (rlkit.core.session).
"""
from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from rlkit.core import checkpoint as ckpt
from rlkit.core import session
from rlkit.core.dist import all_reduce_sum, print0
from rlkit.core.errors import RlkitError


def maybe_compile(ctx, model: torch.nn.Module, dynamic: bool = False):
    """torch.compile per `model.compile` (what session.begin() does; kept for stages that call it)."""
    return session.maybe_compile(ctx, model, dynamic)


def log_step(ctx, done: int, meter, **values) -> None:
    """Every `log_every` steps and at the last: one console line and one tracked write of the step's
    values (loss, lr_mult, ...) plus tokens/s (first: the primary speed figure) and MFU since the previous line."""
    s = ctx.cfg
    if done % s.log_every and done != s.steps:
        return
    tok_s, mfu = meter.read()
    tok_s *= ctx.dist.world_size  # tokens/s of all ranks together; MFU stays per device
    print0(f"[{ctx.name}] step {done:5d}/{s.steps} | {tok_s:,.0f} tok/s | loss {values['loss']:.4f} | "
           f"lr x{values['lr_mult']:.4f} | MFU {mfu:.1%}")
    ctx.tracker.metrics({**values, "tokens_per_s": tok_s, "mfu": mfu}, step=done, stage=ctx.name)


def end_step(ctx, done: int, model, optimizer, extra: dict) -> None:
    """session.end_step for stages that save through ctx.save: after step `done`, the `save_every`
    checkpoint (the last step's is the stage's own, saved as done), then a requested stop."""
    every = ctx.cfg.save_every
    if every and done % every == 0 and done != ctx.cfg.steps:
        ctx.save(done, model, optimizer, extra)
    ctx.stop_if_requested(done, model, optimizer, extra)


@torch.no_grad()
def grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """L2 norm of all gradients, as a 0-d tensor (no device sync until someone reads it). Sharded (fsdp,
    DTensor) gradients: the squared norms of this rank's shards, summed over ranks."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    local = [g.to_local() for g in grads if isinstance(g, DTensor)]
    if local:
        square = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) ** 2 for g in local]).sum()
        return all_reduce_sum(square).sqrt()
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))


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
