"""The rl step's tracked numbers: named sums on this rank, reduced over ranks in one all-reduce per step.

The update adds to named sums (tokens, clipped tokens, ratios, k3 KLs to the old policy and to the
reference, entropy, rows) and a running max of the ratio, all as tensors on the device, so nothing
waits for the device until the end of the step. `reduce` stacks them with the step's other figures
(rewards, counts, seconds: each rank's own, to be averaged), sums the stack over ranks in one
all-reduce and reads it back with one tolist(). A max goes through the same sum: each rank writes its
own in its slot of a world-sized vector, zeros elsewhere, so the sum holds every rank's value exactly.

Sampling/training mismatch (when the rollouts bring the sampler's log-probs, `sample_logp`: the model's
own, T=1, full vocabulary), over the sampled tokens the update ran a forward on, with d = old_logp -
sample_logp (old_logp: the training forward's log-prob at the sampling weights, already computed):
mismatch/logratio_mean and mismatch/logratio_max, the mean and max of |d|, and mismatch/kl, Schulman's
k3 estimate exp(d) - d - 1 of KL(sampler || trainer), unbiased for tokens drawn from the sampler's T=1
full-vocabulary distribution (under another temperature or a top-k, a non-negative measure of the gap).
Every epoch adds the same tokens again, which leaves the mean and the max as they are. A step whose rows
all went without a forward (one update, every advantage 0 and the algorithm's zero_advantage_inert)
measured nothing and tracks no mismatch/* figure.
"""
from __future__ import annotations

import torch

from rlkit.core.dist import all_reduce_sum
from rlkit.lib.generation.sampling import next_token_entropy
from rlkit.lib.training.objectives import k3
from rlkit.plugins.stages.rl_plan import row_lengths

SUMS = ("tokens", "clipped", "ratio", "kl_old", "kl_ref", "entropy_tokens", "entropy", "rows", "inert_rows",
        "mismatch_tokens", "logratio", "mismatch_kl")


class Tally:
    """Sums of the step's tracked quantities on this rank, by name."""

    def __init__(self, device, has_ref: bool = False, has_mismatch: bool = False):
        self.device, self.has_ref, self.has_mismatch = device, has_ref, has_mismatch
        self.sums = {name: torch.zeros((), device=device) for name in SUMS}
        self.ratio_max = self.logratio_max = torch.zeros((), device=device)
        self.rollout_entropy = False  # the entropy came with the rollouts: the forwards skip it
        self.losses, self.gnorms = [], []
        self.forward_only_tokens = 0  # this rank's tokens (prompt + completion) in rows without backward
        self.no_forward_tokens = 0  # ... in rows without a forward either

    def add(self, name: str, value) -> None:
        self.sums[name] = self.sums[name] + value

    def count_rows(self, rows, forward: bool) -> None:
        """The rows and those that get no backward (rows.inert), and the tokens of their forward without
        autograd (when they get one)."""
        inert = rows.inert
        self.add("rows", float(len(inert)))
        self.add("inert_rows", float(inert.sum()))
        inert_tokens = int(row_lengths(rows.mask[inert.to(rows.mask.device)]).sum())
        self.forward_only_tokens, self.no_forward_tokens = (inert_tokens, 0) if forward else (0, inert_tokens)

    def add_rollout_entropy(self, entropy, mask) -> None:
        """entropy (N,): each row's entropy summed over its sampled tokens, mask (N, L-1)."""
        self.rollout_entropy = True
        self.add("entropy_tokens", mask.sum())
        self.add("entropy", entropy.to(self.device).float().sum())

    def add_entropy(self, logits, m) -> None:
        """A forward's entropy on the sampled positions, unless the rollouts brought it."""
        if not self.rollout_entropy:
            self.add("entropy_tokens", m.sum())
            self.add("entropy", (next_token_entropy(logits.detach()) * m).sum())  # logits already capped

    @torch.no_grad()
    def add_tokens(self, algorithm, logp, m, adv, extra) -> None:
        """One micro-batch's ratios, clip, KLs; logp (B, T) without gradient."""
        rho = torch.exp(logp - extra["old_logp"])  # (B, T)
        self.add("tokens", m.sum())
        self.add("clipped", (algorithm.clipped(logp, m, adv, extra).float() * m).sum())
        self.add("ratio", (rho * m).sum())
        self.add("kl_old", (k3(extra["old_logp"], logp) * m).sum())
        if "ref_logp" in extra:
            self.add("kl_ref", (k3(extra["ref_logp"], logp) * m).sum())
        self.ratio_max = torch.maximum(self.ratio_max, torch.where(m > 0, rho, 0.0).max())
        if "sample_logp" in extra:
            self.add_mismatch(extra["old_logp"], extra["sample_logp"], m)

    def add_mismatch(self, old_logp, sample_logp, m) -> None:
        """The sampling/training gap on one micro-batch's sampled tokens (module docstring)."""
        d = old_logp - sample_logp
        self.add("mismatch_tokens", m.sum())
        self.add("logratio", (d.abs() * m).sum())
        self.add("mismatch_kl", (k3(old_logp, sample_logp) * m).sum())
        self.logratio_max = torch.maximum(self.logratio_max, torch.where(m > 0, d.abs(), 0.0).max())

    def add_update(self, loss: float, gnorm) -> None:
        self.losses.append(loss)
        self.gnorms.append(float(gnorm))

    def reduce(self, ctx, means: dict | None = None) -> dict:
        """`means` (each rank's own figures) averaged over ranks, then the update's figures, when it ran;
        one all-reduce and one read-back for all of them."""
        means, world = means or {}, ctx.dist.world_size
        slots = [torch.zeros((), device=ctx.device) for _ in range(2 * world)]  # ratio max, then |log-ratio| max
        slots[ctx.dist.rank], slots[world + ctx.dist.rank] = self.ratio_max, self.logratio_max
        parts = [torch.as_tensor(v, dtype=torch.float32).to(ctx.device) for v in means.values()]
        values = all_reduce_sum(torch.stack(parts + list(self.sums.values()) + slots)).tolist()
        out = {name: v / world for name, v in zip(means, values)}
        if self.losses:
            maxes = values[-2 * world:]
            out.update(self.result(dict(zip(SUMS, values[len(means):])), max(maxes[:world]), max(maxes[world:])))
        return out

    def result(self, sums: dict, ratio_max: float, logratio_max: float = 0.0) -> dict:
        """The update's tracked figures from the sums over ranks."""
        tokens, ent_tokens = max(sums["tokens"], 1.0), max(sums["entropy_tokens"], 1.0)
        out = {"loss": sum(self.losses) / len(self.losses), "grad_norm": sum(self.gnorms) / len(self.gnorms),
               "clip_frac": sums["clipped"] / tokens, "ratio_mean": sums["ratio"] / tokens, "ratio_max": ratio_max,
               "kl_old": sums["kl_old"] / tokens, "entropy": sums["entropy"] / ent_tokens,
               "no_backward_frac": sums["inert_rows"] / max(sums["rows"], 1.0)}
        if self.has_ref:
            out["kl_ref"] = sums["kl_ref"] / tokens
        if self.has_mismatch and sums["mismatch_tokens"] > 0:  # not a 0 where no token was measured
            n = sums["mismatch_tokens"]
            out.update({"mismatch/logratio_mean": sums["logratio"] / n, "mismatch/logratio_max": logratio_max,
                        "mismatch/kl": sums["mismatch_kl"] / n})
        return out
