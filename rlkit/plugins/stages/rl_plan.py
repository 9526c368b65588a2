"""The rl update's rows and its plan: which rows get a backward, in which minibatch and micro-batch.

    updates: {epochs: 1, minibatches: 1}     # the default: one optimizer step per batch of rollouts

The step's rows (all ranks' prompts x samples, in order) split into `minibatches`, row i into minibatch
i % minibatches, so the minibatches are the same at any world size. Each is one optimizer step, its
backward accumulated over micro-batches of `device_batch_size` rows. Under DDP every rank runs as many
micro-batches as the rank with the most (a rank short of rows runs an empty one, `None`), since DDP's
all-reduce needs every rank, and at least one (an empty pass then gives the zero gradient a full backward
would have given, so the optimizer still steps).

Inert rows get no backward: when the algorithm declares `zero_advantage_inert` (its loss gives a row whose
advantage is 0 no gradient), those rows go to the minibatch's `inert` micro-batches, run without autograd
for the tracked numbers only. With one update, no reference model and the entropy from the rollouts they
need no forward at all (`forward_inert` False): the weights are still the sampling weights.

Within a minibatch the rows to train come first, then the inert ones, each part in order of length, and
each micro-batch is trimmed to its longest row: rows of like length together leave little padding to
compute on (docs/performance.md). The gradient is the same sum, in another order.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from rlkit.core.dist import all_reduce_max


@dataclass
class Rows:
    """One step's rows on this rank, as the update reads them."""
    ids: torch.Tensor  # (N, L) prompt + completion, right-padded
    mask: torch.Tensor  # (N, L-1) float: 1 where token t+1 was sampled
    adv: torch.Tensor  # (N,) each row's advantage
    index: Optional[torch.Tensor] = None  # (N,) each row's index among the step's rows of all ranks (default 0..N-1)
    entropy: Optional[torch.Tensor] = None  # (N,) next-token entropy summed over the sampled tokens, from the rollouts
    old_logp: Optional[torch.Tensor] = None  # (N, L-1) the sampling weights' log-probs (several updates a step)
    ref_logp: Optional[torch.Tensor] = None  # (N, L-1) the reference model's (an algorithm that needs it)
    inert: Optional[torch.Tensor] = None  # (N,) bool: rows that get no backward (set by the plan)
    sample_logp: Optional[torch.Tensor] = None  # (N, L-1) the sampler's model log-probs of the targets (T=1)


@dataclass
class Micro:
    """One micro-batch: its rows and their inputs, trimmed to the longest row."""
    rows: slice  # into Rows (in the plan's order)
    x: torch.Tensor  # (B, T) inputs
    y: torch.Tensor  # (B, T) targets, -1 where nothing was sampled
    m: torch.Tensor  # (B, T) mask


@dataclass
class Minibatch:
    """One optimizer step: its rows `span`, micro-batches to train (None: an empty pass) and inert ones."""
    span: slice
    train: list  # [Micro | None]
    inert: list  # [Micro]


@dataclass
class Plan:
    minibatches: list  # [Minibatch]
    epochs: int
    forward_inert: bool  # inert rows get a forward without autograd (else tracked at ratio 1)

    @property
    def updates(self) -> int:
        return self.epochs * len(self.minibatches)

    def micros(self) -> list:
        """Every micro-batch with rows: all minibatches' rows to train, then all their inert rows."""
        train = [mb for b in self.minibatches for mb in b.train if mb is not None]
        return train + [mb for b in self.minibatches for mb in b.inert]


def make_plan(ctx, rows: Rows, inert_ok: bool, reference) -> tuple[Rows, Plan]:
    """(the rows in the plan's order, the plan) for `updates.epochs` x `updates.minibatches` updates;
    `inert_ok`: the algorithm's zero_advantage_inert."""
    s = ctx.cfg
    M, size = s.updates.minibatches, s.device_batch_size
    index = torch.arange(rows.ids.shape[0]) if rows.index is None else rows.index.cpu()
    inert = (rows.adv == 0).cpu() if inert_ok else torch.zeros(len(index), dtype=torch.bool)
    # each minibatch a contiguous slice: its rows to train first, its inert rows after, each part by length
    length = row_lengths(rows.mask).tolist()
    perm = sorted(range(len(index)), key=lambda i: (int(index[i]) % M, bool(inert[i]), length[i], int(index[i])))
    if perm != list(range(len(index))):
        entropy = None if rows.entropy is None else rows.entropy[torch.tensor(perm, device=rows.entropy.device)]
        sample_logp = None if rows.sample_logp is None else rows.sample_logp[perm]
        rows = replace(rows, ids=rows.ids[perm], mask=rows.mask[perm], adv=rows.adv[perm], entropy=entropy,
                       sample_logp=sample_logp)
        inert = inert[perm]
    rows = replace(rows, index=index, inert=inert)
    ends = torch.bincount(index % M, minlength=M).cumsum(0).tolist()
    minibatches = []
    for b0, b1 in zip([0, *ends[:-1]], ends):
        split = b0 + int((~inert[b0:b1]).sum())  # where this minibatch's inert rows start
        minibatches.append(Minibatch(slice(b0, b1), micro_batches(ctx, rows, b0, split, size),
                                     micro_batches(ctx, rows, split, b1, size, pad=False)))
    epochs = s.updates.epochs
    forward_inert = rows.entropy is None or epochs * M > 1 or reference is not None
    return rows, Plan(minibatches, epochs, forward_inert)


def row_lengths(mask: torch.Tensor) -> torch.Tensor:
    """mask (N, L-1) -> (N,) tokens each row's forward needs: one past its last sampled target (0: none)."""
    sampled = mask > 0
    last = (sampled * torch.arange(1, mask.shape[1] + 1, device=mask.device)).amax(dim=1)  # 1-based; 0 if none
    return torch.where(sampled.any(dim=1), last + 1, 0).cpu()


def micro_batches(ctx, rows: Rows, b0: int, b1: int, size: int, pad: bool = True) -> list:
    """The micro-batches of rows b0..b1, trailing padding trimmed. With `pad` (for a backward), padded with
    None to the count of the rank that has the most under DDP, and to one when no rank has a row."""
    out = []
    for r0 in range(b0, b1, size):
        sl = slice(r0, min(r0 + size, b1))
        mask = rows.mask[sl]
        length = int(mask.nonzero()[:, 1].max()) + 2 if mask.any() else 2  # trim trailing padding
        x, y, m = rows.ids[sl, :length - 1], rows.ids[sl, 1:length], mask[:, :length - 1]
        out.append(Micro(sl, x, torch.where(m > 0, y, -1), m))
    if pad:
        most = all_reduce_max(len(out), ctx.device) if ctx.dist.distributed else len(out)
        out += [None] * (max(most, 1) - len(out))
    return out

