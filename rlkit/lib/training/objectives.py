"""Pieces the policy-gradient losses share: group-relative advantages, the clipped surrogate, the k3 KL,
truncated importance sampling (an algorithm's `tis_cap`).

Algorithm plugins import these (rlkit.core names no plugin); each is a few lines, written out so a
loss reads as its paper's formula. Shapes: rewards (P, G): P prompts x G completions; per token (B, T).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rlkit.core.errors import RlkitError

if TYPE_CHECKING:
    import torch


def group_advantages(rewards: torch.Tensor, scale: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """(P, G) -> (P, G): r - mean of its group; with `scale`, divided by (the group's sample std + eps)
    (torch.std, unbiased: DeepSeekMath's GRPO, DAPO, GSPO, CISPO)."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    return adv / (rewards.std(dim=1, keepdim=True) + eps) if scale else adv


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) -> (P, G): r_i - mean of the other G - 1 rewards of its group (RLOO)."""
    G = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)
    return rewards - others


def ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """(B, T): rho_t = exp(logp_t - old_logp_t), the new policy's probability over the sampling policy's."""
    return (logp - old_logp).exp()


def clipped_objective(rho: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """PPO's surrogate min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A), elementwise (rho and adv
    broadcast). Returns (objective, clipped): clipped is True where the clipped term is the smaller one
    and differs, i.e. where the clip stops the gradient (rho > 1 + eps_high with A > 0, rho < 1 - eps_low
    with A < 0)."""
    unclipped = rho * adv
    clipped_term = rho.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    return unclipped.minimum(clipped_term), clipped_term < unclipped


def k3(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Schulman's unbiased, non-negative KL estimator per token: exp(d) - d - 1 with d = ref_logp - logp."""
    d = ref_logp - logp
    return d.exp() - d - 1.0


def per_sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,): the mean over each sequence's sampled tokens (1/|o_i| sum_t); 0 for an empty row."""
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def tis_weight(extra: dict, cap: float | None):
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"; verl's and TRL's TIS): the detached per-token weight (B, T)
    min(p_train / p_sample, cap), p_train = exp(old_logp) the training forward's probability at the sampling
    weights, p_sample = exp(sample_logp) the sampler's (the model's own, T=1, full vocabulary). It corrects
    the gap between the two (e.g. bf16 sampling), not the rollout's temperature or top-k. cap None: 1 (off)."""
    if cap is None:
        return 1.0
    return (extra["old_logp"] - extra["sample_logp"]).exp().clamp(max=cap).detach()


def with_tis(algorithm, cap: float | None, name: str):
    """`algorithm` with its `tis_cap` set (None: off) and, when on, "sample_logp" added to what it needs."""
    if cap is not None and not cap > 0:
        raise RlkitError(f"algorithm {name}: tis_cap must be a positive number (e.g. 2.0) or null, got {cap!r}")
    algorithm.tis_cap = cap
    if cap is not None:
        algorithm.needs = frozenset(algorithm.needs) | {"sample_logp"}
    return algorithm
