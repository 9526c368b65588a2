"""The rl stage's update: `epochs` passes over one step's rollouts, each in `minibatches` optimizer steps.

It reads like nanochat's chat_rl.py (its training loop), with the off-policy and KL parts of PPO / GRPO
(Schulman et al. 2017; DeepSeekMath, Shao et al. 2024) and TRL's / verl's minibatching:

    plan = which rows train, in which minibatch and micro-batch (rl_plan.py)
    before the first update: old_logp (several updates) and ref_logp (a reference), without autograd
    for each epoch, for each minibatch:
        for each micro-batch of rows to train: forward, the algorithm's loss, backward
        for each micro-batch of inert rows: a forward without autograd, for the tracked numbers only
        optimizer step

Each minibatch's loss is normalised by its counts over all ranks (`extra["num_tokens"]`,
`extra["num_sequences"]`), so the gradient does not depend on the device batch size or the world size.
old_logp, the sampling policy's per-token log-prob, is taken before the first update with the same
forward (and micro-batch shapes) as training, so the first update sees ratio 1 exactly and later ones
ratio != 1. With a single update there is no separate pass: the weights are still the sampling weights,
so old_logp is the training forward's own log-prob, detached. ref_logp comes from the frozen reference
model (for a policy with adapters, itself with the adapters off), under the same autocast. The entropy
of the sampling policy on the sampled positions comes with the rollouts (each row's sum,
rlkit.lib.generation.sampling); without it (`Rows.entropy` None) it is taken from the forwards' logits.
The sampler's own log-probs of the sampled tokens (`Rows.sample_logp`: the model's, T=1, full vocabulary)
reach the loss as extra["sample_logp"] (truncated importance sampling, an algorithm's `tis_cap`).

Tracked per step (rl_stats.py, all ranks): the loss and gradient norm (means over the updates), the clip
fraction (share of token-updates where the algorithm's `clipped` says the clip acted), mean and max
ratio, the k3 KL to the old policy and to the reference, the token entropy and the share of rows that
got no backward; with the sampler's log-probs, the sampling/training mismatch (mismatch/*: rl_stats.py)
from old_logp, which is the training forward's log-prob at the sampling weights, at no extra forward.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from rlkit.core import checkpoint as ckpt
from rlkit.core.dist import print0
from rlkit.core.handoff import Checkpoint
from rlkit.core.policy import build
from rlkit.lib.training.loop import grad_norm
from rlkit.lib.training import loop as training
from rlkit.lib.training.algorithm import Algorithm
from rlkit.lib.training.parallel import even_forwards
from rlkit.plugins.stages.rl_plan import Plan, Rows, make_plan
from rlkit.plugins.stages.rl_stats import Tally


@dataclass
class Learner:
    """What the update trains, and with what."""
    ctx: Any  # the stage's context: config, device, autocast, ranks
    train: torch.nn.Module  # the model as trained (DDP-wrapped under torchrun)
    model: torch.nn.Module  # the model itself: forwards without autograd, gradient norm
    optimizer: Any
    algorithm: Algorithm
    reference: Optional[Any] = None  # the frozen reference model, for an algorithm that needs ref_logp
    step: int = 0  # 0-based, for error lines


def update(learner: Learner, rows: Rows) -> Tally:
    """Every update of one step over this rank's `rows`; returns what it tracked, not yet reduced over ranks."""
    ctx = learner.ctx
    tally = Tally(ctx.device, has_ref=learner.reference is not None, has_mismatch=rows.sample_logp is not None)
    if rows.entropy is not None:
        tally.add_rollout_entropy(rows.entropy, rows.mask)
    rows, plan = make_plan(ctx, rows, learner.algorithm.zero_advantage_inert, learner.reference)
    tally.count_rows(rows, plan.forward_inert)
    before_update(learner, rows, plan, tally)
    for _epoch in range(plan.epochs):
        for mb in plan.minibatches:
            extra = minibatch_extra(ctx, rows, mb.span)
            if extra is None:  # group filtering kept fewer rows than minibatches
                continue
            loss = sum(backward(learner, rows, micro, extra, tally, last=i == len(mb.train) - 1)
                       for i, micro in enumerate(mb.train))
            for micro in mb.inert:
                track_inert(learner, rows, micro, extra, tally, plan.forward_inert)
            even_forwards(learner.model, len(mb.inert) if plan.forward_inert else 0, ctx.device)
            optimizer_step(learner, loss, tally)
    return tally


def minibatch_extra(ctx, rows: Rows, span: slice) -> dict | None:
    """The counts one minibatch's loss is normalised by, over all ranks; None when no rank has a row."""
    n_rows, tokens = ctx.sum_over_ranks(torch.tensor([float(span.stop - span.start), float(rows.mask[span].sum())],
                                                     device=ctx.device))
    if n_rows == 0:
        return None
    return {"num_tokens": tokens.clamp(min=1), "num_sequences": float(n_rows),
            "max_new_tokens": ctx.cfg.rollout.max_new_tokens}


def forward(model, x, y):
    """(logp (B, T) float32 of the targets, 0 where y == -1; logits (B, T, V)) from one forward."""
    logits = model(x)
    logp = -F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none").view(y.shape)
    return logp.float(), logits


def micro_extra(rows: Rows, micro, extra: dict, own_logp) -> dict:
    """`extra` for one micro-batch's loss: the minibatch's counts, its rows' lengths, old_logp (the forward's
    own when there was no separate pass), ref_logp and sample_logp."""
    T = own_logp.shape[1]
    out = dict(extra, lengths=micro.m.sum(dim=1),
               old_logp=own_logp if rows.old_logp is None else rows.old_logp[micro.rows, :T])
    if rows.ref_logp is not None:
        out["ref_logp"] = rows.ref_logp[micro.rows, :T]
    if rows.sample_logp is not None:
        out["sample_logp"] = rows.sample_logp[micro.rows, :T]
    return out


@torch.no_grad()
def before_update(learner: Learner, rows: Rows, plan: Plan, tally: Tally) -> None:
    """rows.old_logp (N, L-1) when the step makes several updates (and the entropy from the same forwards),
    rows.ref_logp when there is a reference: every micro-batch with rows, in the shapes training uses."""
    ctx, micros = learner.ctx, plan.micros()
    if plan.updates > 1:
        rows.old_logp = torch.zeros(rows.mask.shape, device=ctx.device)
        for micro in micros:
            with ctx.autocast():
                logp, logits = forward(learner.model, micro.x, micro.y)
            rows.old_logp[micro.rows, :logp.shape[1]] = logp
            tally.add_entropy(logits, micro.m)
        even_forwards(learner.model, len(micros), ctx.device)
    if learner.reference is not None:
        rows.ref_logp = torch.zeros(rows.mask.shape, device=ctx.device)
        for micro in micros:
            ref_logp(ctx, learner.reference, micro.x, micro.y, rows, micro.rows)


@torch.no_grad()
def ref_logp(ctx, reference, x, y, rows: Rows, sl: slice) -> torch.Tensor:
    """The reference model's log-probs of one micro-batch, kept in rows.ref_logp."""
    with ctx.autocast():
        logp = forward(reference, x, y)[0]
    rows.ref_logp[sl, :logp.shape[1]] = logp
    return logp


def backward(learner: Learner, rows: Rows, micro, extra: dict, tally: Tally, last: bool = True) -> float:
    """One micro-batch: forward, the algorithm's loss, backward; returns this rank's share of the loss.
    `micro` None: this rank has no rows left, an empty pass keeps DDP's all-reduce in step."""
    ctx, algorithm, world = learner.ctx, learner.algorithm, learner.ctx.dist.world_size
    with ctx.no_sync(learner.train, last=last), ctx.autocast():
        if micro is None:
            x0 = torch.zeros(1, 1, dtype=torch.long, device=ctx.device)
            (learner.train(x0).sum() * 0.0).backward()
            return 0.0
        logp, logits = forward(learner.train, micro.x, micro.y)
        extra = micro_extra(rows, micro, extra, logp.detach())
        loss = algorithm.loss(logp, micro.m, rows.adv[micro.rows], extra) * world  # DDP averages ranks
    loss.backward()
    if rows.old_logp is None:  # one update: no separate pass took the entropy
        tally.add_entropy(logits, micro.m)
    tally.add_tokens(algorithm, logp.detach(), micro.m, rows.adv[micro.rows], extra)
    return loss.item() / world


@torch.no_grad()
def track_inert(learner: Learner, rows: Rows, micro, extra: dict, tally: Tally, run_forward: bool) -> None:
    """An inert micro-batch: tracked like the rest (entropy, ratio, KL, clip) from a forward without autograd;
    it adds nothing to the gradient. Without `run_forward` (one update, no reference): tracked at ratio 1,
    as the sampling weights' forward would give."""
    adv = rows.adv[micro.rows]
    if not run_forward:
        zero = torch.zeros_like(micro.m)
        tally.add_tokens(learner.algorithm, zero, micro.m, adv, dict(extra, lengths=micro.m.sum(dim=1), old_logp=zero))
        return
    with learner.ctx.autocast():
        logp, logits = forward(learner.model, micro.x, micro.y)
    extra = micro_extra(rows, micro, extra, logp)
    if rows.old_logp is None:
        tally.add_entropy(logits, micro.m)
    tally.add_tokens(learner.algorithm, logp, micro.m, adv, extra)


def optimizer_step(learner: Learner, loss: float, tally: Tally) -> None:
    """After a minibatch's backward: stop on a non-finite loss or gradient, else step and clear the gradient."""
    ctx = learner.ctx
    gnorm = grad_norm(learner.model)
    training.check_step(ctx, ctx.mean_over_ranks(torch.tensor(loss, device=ctx.device)), gnorm, learner.step + 1)
    learner.optimizer.step()
    learner.model.zero_grad(set_to_none=True)
    tally.add_update(loss, gnorm)


def reference_model(ctx, model, tokenizer, start: Checkpoint | None):
    """The frozen reference for ref_logp: `reference.init` if set, else the checkpoint the stage started
    from (with none, the model as the stage began). Every rank holds one; it never trains. A policy with
    adapters (its optional `adapter_free()`, e.g. LoRA) is, without `reference.init`, its own reference:
    its base weights with the adapters off, no second copy in memory."""
    path = ctx.cfg.reference.init
    where = f"stages.{ctx.name}.reference.init"
    adapter_free = getattr(model, "adapter_free", None)
    if path is None and callable(adapter_free) and adapter_free() is not None:
        print0(f"[{ctx.name}] reference model: the policy's base weights, adapters off (no copy)")
        return AdapterFree(model)
    handle = Checkpoint.open(path, where) if path is not None else start
    if handle is None or handle.path is None:
        ref = copy.deepcopy(model)
    else:
        ref, _ = build(ctx.plugins, handle.model["name"], handle.model["args"], tokenizer, ctx.seq_len, where)
        state, _, _ = ckpt.load_checkpoint(handle.path, load_optimizer=False, verify=not handle.verified)
        ref.load_state_dict(state)
        print0(f"[{ctx.name}] reference model: {handle.path}")
    ref = ref.to(ctx.device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class AdapterFree:
    """The policy itself as the reference: each forward inside its `adapter_free()` context (no gradient is
    taken: ref_logp runs under no_grad)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, idx):
        with self.model.adapter_free():
            return self.model(idx)
