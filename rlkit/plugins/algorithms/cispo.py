"""CISPO, clipped importance-sampling policy optimisation (MiniMax 2025, "MiniMax-M1", arXiv:2506.13585).

    A_i   = (r_i - mean(r)) / (std(r) + eps)                (std unbiased)
    rho_t = exp(logp_t - old_logp_t)
    loss  = -sum_{i,t} sg(clip(rho_t, 1 - clip_eps_low, 1 + clip_eps_high)) * A_i * logp_t / N
sg: stop-gradient; N: tokens in the minibatch (all ranks). Unlike PPO's clip, which drops the gradient of
clipped tokens, CISPO clips the importance weight and keeps every token's gradient. clip_eps_low = 1.0
means no lower clip. Leaves out: no KL term.
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.core.errors import RlkitError
from rlkit.lib.training.objectives import group_advantages, ratio


class CISPO(Algorithm):
    needs = frozenset({"old_logp"})
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward
    min_samples = 2

    def __init__(self, clip_eps_low: float, clip_eps_high: float, eps: float):
        self.low, self.high, self.eps = clip_eps_low, clip_eps_high, eps

    def advantages(self, rewards):
        return group_advantages(rewards, scale=True, eps=self.eps)

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). REINFORCE per token, weighted by the clipped, detached ratio."""
        weight = ratio(logp, extra["old_logp"]).clamp(1.0 - self.low, 1.0 + self.high).detach()  # (B, T)
        return -(weight * adv[:, None] * logp * mask).sum() / extra["num_tokens"]

    def clipped(self, logp, mask, adv, extra):
        """(B, T) bool: tokens whose weight the clip changed (their gradient is scaled, not stopped)."""
        rho = ratio(logp, extra["old_logp"])
        return (rho > 1.0 + self.high) | (rho < 1.0 - self.low)


def cispo(clip_eps_low: float = 1.0, clip_eps_high: float = 0.28, eps: float = 1e-4) -> CISPO:
    if not (0 <= clip_eps_low <= 1 and clip_eps_high > 0):
        raise RlkitError(f"algorithm cispo: clip_eps_low must be in [0, 1] and clip_eps_high > 0 "
                         f"(got {clip_eps_low}, {clip_eps_high})")
    return CISPO(clip_eps_low, clip_eps_high, eps)


@rlkit.hookimpl
def rlkit_algorithms():
    return {"cispo": cispo}
