"""GSPO, group sequence policy optimisation (Zheng et al. 2025, arXiv:2507.18071).

    A_i  = (r_i - mean(r)) / (std(r) + eps)                 (std unbiased)
    s_i  = exp((1/|o_i|) sum_t (logp_t - old_logp_t))       (the length-normalised sequence ratio)
    loss = -(1/S) sum_i min(s_i * A_i, clip(s_i, 1 - clip_eps_low, 1 + clip_eps_high) * A_i)
S: sequences in the whole minibatch (all ranks). The clip acts on whole sequences, so its ranges are
tiny (3e-4, 4e-4, the paper's). Leaves out: GSPO-token (per-token advantages) and any KL term.
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.core.errors import RlkitError
from rlkit.lib.training.objectives import clipped_objective, group_advantages, per_sequence_mean


class GSPO(Algorithm):
    needs = frozenset({"old_logp"})
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward
    min_samples = 2

    def __init__(self, clip_eps_low: float, clip_eps_high: float, eps: float):
        self.low, self.high, self.eps = clip_eps_low, clip_eps_high, eps

    def advantages(self, rewards):
        return group_advantages(rewards, scale=True, eps=self.eps)

    def _objective(self, logp, mask, adv, extra):
        s = per_sequence_mean(logp - extra["old_logp"], mask).exp()  # (B,)
        return clipped_objective(s, adv, self.low, self.high)  # (B,), (B,)

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). Sequence-level clipped objective, mean over sequences."""
        return -self._objective(logp, mask, adv, extra)[0].sum() / extra["num_sequences"]

    def clipped(self, logp, mask, adv, extra):
        return self._objective(logp, mask, adv, extra)[1][:, None].expand_as(mask)  # a clipped sequence's tokens


def gspo(clip_eps_low: float = 3e-4, clip_eps_high: float = 4e-4, eps: float = 1e-4) -> GSPO:
    if not (0 < clip_eps_low < 1 and clip_eps_high > 0):
        raise RlkitError(f"algorithm gspo: clip_eps_low must be in (0, 1) and clip_eps_high > 0 "
                         f"(got {clip_eps_low}, {clip_eps_high})")
    return GSPO(clip_eps_low, clip_eps_high, eps)


@rlkit.hookimpl
def rlkit_algorithms():
    return {"gspo": gspo}
