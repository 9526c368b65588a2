"""The rl stage's update: `epochs` passes over one step's rollouts, each in `minibatches` optimizer steps.

    updates: {epochs: 1, minibatches: 1}     # the default: one optimizer step per batch of rollouts

The step's rows (all ranks' prompts x samples, in order) split into `minibatches`, row i into minibatch
i % minibatches, so the minibatches are the same at any world size. Each is one optimizer step, its
backward accumulated over micro-batches of `device_batch_size` rows, and its loss normalised by its
counts over all ranks (`num_tokens`, `num_sequences`), so the gradient does not
depend on the device batch size or the world size. Under DDP every rank runs as many micro-batches as the
rank with the most (a rank short of rows runs an empty one), since DDP's all-reduce needs every rank.
Within a minibatch the rows are cut into micro-batches in order of length, each micro-batch trimmed to its
longest row: rows of mixed lengths would leave a quarter of a micro-batch padding (quickstart, 64 rows),
like lengths leave a few percent. The gradient is the same sum, in another order.

Rows that cannot move the weights get no backward: when the algorithm declares
`zero_advantage_inert = True` (its loss gives a row whose advantage is 0 no gradient: no KL or entropy
term), those rows go through a forward without autograd, for the tracked numbers only, and the rest are
packed into the micro-batches. The gradient is the same sum (the counts that normalise it still include
every row); only its rounding differs. REINFORCE without a baseline skips every reward-0 row this way,
the GRPO family every group whose rewards agree. With one update, no reference model and the entropy from
the rollouts, inert rows get no forward at all: the weights are still the sampling weights, so their ratio
is 1 and their KL to the old policy 0 (the algorithm's `clipped` is asked at ratio 1). A minibatch left
with no row to train takes a zero gradient (an empty pass), as the full backward would have given, so the
optimizer steps as before.

old_logp, the sampling policy's per-token log-prob, is taken once per step before the first update with
the same forward (and micro-batch shapes) as training, so the first update sees ratio 1 exactly and
later ones ratio != 1. With a single update there is no separate pass: the weights are still the sampling
weights, so old_logp is the training forward's own log-prob, detached. ref_logp comes from the frozen
reference model (for a policy with adapters, itself with the adapters off), under the same autocast. The
entropy of the sampling policy's next-token distribution on the sampled positions comes with the rollouts
(each row's sum, rlkit.lib.generation.sampling), read off the decode's logits; without it (`entropy=None`) it is
taken from the training forwards' logits, a (B, T, V) float32 pass: GBs at a real vocabulary.

Tracked per step (all ranks): the loss and gradient norm (means over the updates), the clip fraction
(share of token-updates where the algorithm's `clipped` says the clip acted), mean and max ratio, the
k3 KL to the old policy and to the reference, and the sampling policy's token entropy.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from rlkit.core import checkpoint as ckpt
from rlkit.lib.training import loop as training
from rlkit.core.dist import all_reduce_max, all_reduce_sum, print0
from rlkit.core.handoff import Checkpoint
from rlkit.lib.training.objectives import k3
from rlkit.core.policy import build
from rlkit.lib.generation.sampling import next_token_entropy
from rlkit.lib.training.loop import grad_norm


def update(ctx, train, model, optimizer, algorithm, reference, ids, mask, adv, step: int, rows=None,
           entropy=None) -> dict:
    """ids (N, L); mask (N, L-1): 1 where token t+1 was sampled; adv (N,); rows (N,): each row's index in
    the step's rows of all ranks (default 0..N-1); entropy (N,): each row's sampled tokens' summed
    next-token entropy from the rollout (default: taken from the forwards). Runs every update of the step
    and returns its tracked numbers (means over ranks)."""
    s = ctx.cfg
    epochs, M = s.updates.epochs, s.updates.minibatches
    rows = torch.arange(ids.shape[0]) if rows is None else rows.cpu()
    inert = (adv == 0).cpu() if getattr(algorithm, "zero_advantage_inert", False) else \
        torch.zeros(len(rows), dtype=torch.bool)  # (N,) rows that get no backward
    # minibatch m holds the step's rows i with i % M == m, on whichever rank they are: the same
    # minibatches at any world size. Sorted so that each minibatch is a contiguous slice here, its
    # rows to train first and its inert rows after them, each part by length: a micro-batch is padded
    # to its longest row, so rows of like length together leave little padding to compute on.
    length = row_lengths(mask).tolist()
    perm = sorted(range(len(rows)), key=lambda i: (int(rows[i]) % M, bool(inert[i]), length[i], int(rows[i])))
    if perm != list(range(len(rows))):
        ids, mask, adv, inert = ids[perm], mask[perm], adv[perm], inert[perm]
    ends = torch.bincount(rows % M, minlength=M).cumsum(0).tolist()
    bounds = list(zip([0, *ends[:-1]], ends))  # this rank's rows of each minibatch
    splits = [b0 + int((~inert[b0:b1]).sum()) for b0, b1 in bounds]  # where each one's inert rows start
    micros = [micro_batches(ctx, ids, mask, b0, c, s.device_batch_size) for (b0, _), c in zip(bounds, splits)]
    forward_only = [micro_batches(ctx, ids, mask, c, b1, s.device_batch_size, pad=False)
                    for (_, b1), c in zip(bounds, splits)]
    # one update, no reference, the entropy from the rollouts: an inert row's forward would tell nothing new
    inert_forward = entropy is None or epochs * M > 1 or reference is not None
    acc = Stats(ctx.device)
    acc.count_rows(inert, mask, inert_forward)
    if entropy is not None:
        acc.add_rollout_entropy(entropy, mask)
    old = None if epochs * M == 1 else before_update(ctx, model, micros + forward_only, mask.shape, acc)  # (N, L-1)
    for _epoch in range(epochs):
        for m, (b0, b1) in enumerate(bounds):
            n_rows, tokens = ctx.sum_over_ranks(torch.tensor([float(b1 - b0), float(mask[b0:b1].sum())],
                                                           device=ctx.device))
            if n_rows == 0:  # group filtering kept fewer rows than minibatches
                continue
            extra = {"num_tokens": tokens.clamp(min=1), "num_sequences": float(n_rows),
                     "max_new_tokens": s.rollout.max_new_tokens}
            loss = minibatch(ctx, train, algorithm, reference, micros[m], adv, extra, old, acc)
            without_backward(ctx, model, algorithm, reference, forward_only[m], adv, extra, old, acc, inert_forward)
            gnorm = grad_norm(model)
            training.check_step(ctx, ctx.mean_over_ranks(torch.tensor(loss, device=ctx.device)), gnorm, step + 1)
            optimizer.step()
            model.zero_grad(set_to_none=True)
            acc.add_update(loss, gnorm)
    return acc.result(ctx, reference is not None)


def row_lengths(mask: torch.Tensor) -> torch.Tensor:
    """mask (N, L-1) -> (N,) tokens each row's forward needs: one past its last sampled target (0: none)."""
    sampled = mask > 0
    last = (sampled * torch.arange(1, mask.shape[1] + 1, device=mask.device)).amax(dim=1)  # 1-based; 0 if none
    return torch.where(sampled.any(dim=1), last + 1, 0).cpu()


def micro_batches(ctx, ids, mask, b0: int, b1: int, size: int, pad: bool = True) -> list:
    """The micro-batches of rows b0..b1, trailing padding trimmed: (rows slice, x, y, m); y is -1 where
    nothing was sampled. With `pad` (for a backward), padded with None to the count of the rank that has
    the most under DDP, and to one when no rank has a row (an empty pass then gives the zero gradient)."""
    out = []
    for r0 in range(b0, b1, size):
        sl = slice(r0, min(r0 + size, b1))
        length = int(mask[sl].nonzero()[:, 1].max()) + 2 if mask[sl].any() else 2  # trim trailing padding
        x, y, m = ids[sl, :length - 1], ids[sl, 1:length], mask[sl, :length - 1]
        out.append((sl, x, torch.where(m > 0, y, -1), m))
    if pad:
        most = all_reduce_max(len(out), ctx.device) if ctx.dist.distributed else len(out)
        out += [None] * (max(most, 1) - len(out))
    return out


def forward(model, x, y):
    """(logp (B, T) float32 of the targets, 0 where y == -1; logits (B, T, V)) from one forward."""
    logits = model(x)
    logp = -F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none").view(y.shape)
    return logp.float(), logits


@torch.no_grad()
def before_update(ctx, model, micros, shape, acc) -> torch.Tensor:
    """old_logp (N, L-1): the sampling policy's log-probs before any update (and its entropy)."""
    old = torch.zeros(shape, device=ctx.device)
    for mb in (mb for part in micros for mb in part if mb is not None):
        sl, x, y, m = mb
        with ctx.autocast():
            logp, logits = forward(model, x, y)
        old[sl, :logp.shape[1]] = logp
        acc.add_entropy(logits, m)
    return old


def minibatch(ctx, train, algorithm, reference, micros, adv, extra, old, acc) -> float:
    """One optimizer step's backward over its micro-batches; returns this rank's share of the loss."""
    world = ctx.dist.world_size
    loss_sum = 0.0
    for i, mb in enumerate(micros):
        with ctx.no_sync(train, last=i == len(micros) - 1), ctx.autocast():
            if mb is None:  # this rank has fewer rows: an empty pass keeps DDP's all-reduce in step
                x0 = torch.zeros(1, 1, dtype=torch.long, device=ctx.device)
                (train(x0).sum() * 0.0).backward()
                continue
            sl, x, y, m = mb
            logp, logits = forward(train, x, y)
            batch_extra = dict(extra, lengths=m.sum(dim=1),
                               old_logp=logp.detach() if old is None else old[sl, :logp.shape[1]])
            if reference is not None:
                batch_extra["ref_logp"] = ref_logp(ctx, reference, x, y, acc, sl.start)
            loss = algorithm.loss(logp, m, adv[sl], batch_extra) * world  # DDP averages ranks
        loss.backward()
        loss_sum += loss.item() / world
        if old is None:
            acc.add_entropy(logits, m)
        acc.add_tokens(algorithm, logp.detach(), m, adv[sl], batch_extra)
    return loss_sum


@torch.no_grad()
def without_backward(ctx, model, algorithm, reference, micros, adv, extra, old, acc, run_forward=True) -> None:
    """The inert rows of one minibatch: a forward without autograd for what is tracked (entropy, ratio,
    KL, clip), as `minibatch` tracks its rows; they add nothing to the gradient, so no backward. Without
    `run_forward` (one update, no reference): tracked at ratio 1, as the sampling weights' forward gives."""
    for sl, x, y, m in micros:
        if not run_forward:
            zero = torch.zeros_like(m)
            acc.add_tokens(algorithm, zero, m, adv[sl], dict(extra, lengths=m.sum(dim=1), old_logp=zero))
            continue
        with ctx.autocast():
            logp, logits = forward(model, x, y)
        batch_extra = dict(extra, lengths=m.sum(dim=1), old_logp=logp if old is None else old[sl, :logp.shape[1]])
        if reference is not None:
            batch_extra["ref_logp"] = ref_logp(ctx, reference, x, y, acc, sl.start)
        if old is None:
            acc.add_entropy(logits, m)
        acc.add_tokens(algorithm, logp, m, adv[sl], batch_extra)


@torch.no_grad()
def ref_logp(ctx, reference, x, y, acc, key: int) -> torch.Tensor:
    """The reference model's log-probs of this micro-batch, computed once per step."""
    if key not in acc.ref:
        with ctx.autocast():
            acc.ref[key] = forward(reference, x, y)[0]
    return acc.ref[key]


class Stats:
    """Sums of the step's tracked quantities on this rank; result() reduces them over ranks."""

    def __init__(self, device):
        self.device, self.ref = device, {}
        self.rollout_entropy = False  # the entropy came with the rollouts: the forwards skip it
        self.sums = torch.zeros(7, device=device)  # tokens, clipped, ratio, kl_old, kl_ref, ent_tokens, entropy
        self.ratio_max = 0.0
        self.losses, self.gnorms = [], []
        self.rows = torch.zeros(2, device=device)  # rows, rows without backward
        self.forward_only_tokens = 0  # this rank's tokens (prompt + completion) in rows without backward
        self.no_forward_tokens = 0  # ... in rows without a forward either

    def count_rows(self, inert, mask, forward: bool):
        """inert (N,) bool, mask (N, L-1): the rows that get no backward, and the tokens of their forward
        without autograd (when they get one)."""
        self.rows += torch.tensor([float(len(inert)), float(inert.sum())], device=self.device)
        tokens = int(row_lengths(mask[inert.to(mask.device)]).sum())
        self.forward_only_tokens, self.no_forward_tokens = (tokens, 0) if forward else (0, tokens)

    def add_entropy(self, logits, m):
        """The forward's entropy on the sampled positions, unless the rollouts brought it."""
        if not self.rollout_entropy:
            self.sums[5] += m.sum()
            self.sums[6] += (next_token_entropy(logits.detach()) * m).sum()  # logits already capped

    def add_rollout_entropy(self, ent_rows, mask):
        """ent_rows (N,): each row's entropy summed over its sampled tokens, mask (N, L-1)."""
        self.rollout_entropy = True
        self.sums[5] += mask.sum()
        self.sums[6] += ent_rows.to(self.device).float().sum()

    @torch.no_grad()
    def add_tokens(self, algorithm, logp, m, adv, extra):
        rho = torch.exp(logp - extra["old_logp"])  # (B, T)
        clip = getattr(algorithm, "clipped", None)
        clipped = clip(logp, m, adv, extra).float() if clip is not None else 0.0 * m
        self.sums[0] += m.sum()
        self.sums[1] += (clipped * m).sum()
        self.sums[2] += (rho * m).sum()
        self.sums[3] += (k3(extra["old_logp"], logp) * m).sum()
        if "ref_logp" in extra:
            self.sums[4] += (k3(extra["ref_logp"], logp) * m).sum()
        if m.any():
            self.ratio_max = max(self.ratio_max, float(rho[m > 0].max()))

    def add_update(self, loss: float, gnorm) -> None:
        self.losses.append(loss)
        self.gnorms.append(float(gnorm))

    def result(self, ctx, has_ref: bool) -> dict:
        sums = all_reduce_sum(self.sums.clone())
        tokens, ent_tokens = max(float(sums[0]), 1.0), max(float(sums[5]), 1.0)
        out = {"loss": sum(self.losses) / len(self.losses), "grad_norm": sum(self.gnorms) / len(self.gnorms),
               "clip_frac": float(sums[1]) / tokens, "ratio_mean": float(sums[2]) / tokens,
               "ratio_max": all_reduce_max(self.ratio_max, ctx.device, float), "kl_old": float(sums[3]) / tokens,
               "entropy": float(sums[6]) / ent_tokens, "forward_only_tokens": self.forward_only_tokens,
               "no_forward_tokens": self.no_forward_tokens}
        rows = all_reduce_sum(self.rows.clone())
        out["no_backward_frac"] = float(rows[1]) / max(float(rows[0]), 1.0)
        if has_ref:
            out["kl_ref"] = float(sums[4]) / tokens
        return out


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
