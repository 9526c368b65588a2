"""DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv:2503.14476).

    A_i   = (r_i - mean(r)) / (std(r) + eps)               (std unbiased)
    rho_t = exp(logp_t - old_logp_t)
    obj_t = min(rho_t * A_i, clip(rho_t, 1 - clip_eps_low, 1 + clip_eps_high) * A_i)   (clip-higher)
    loss  = -sum_{i,t} obj_t / N                            (token-level: N tokens in the minibatch, all ranks)
Dynamic sampling: `filter_groups` asks the rl stage to drop groups whose G rewards are all equal (their
advantages are 0) and to sample further prompts until the step has examples_per_step informative groups
(or stages.rl.max_refills rounds ran). Overlong reward shaping, added to the reward before advantages and
tracked as reward/overlong: a completion of L tokens gets
    0 if L <= max_len - cache_len;   (max_len - cache_len - L) / cache_len if L <= max_len;   -1 beyond,
with max_len defaulting to the rollout's max_new_tokens and cache_len to max_len // 5.
Leaves out: no KL term (as the paper); its overlong filtering (masking truncated completions' loss).
tis_cap (default null: off): truncated importance sampling, each token's term times the detached
min(p_train / p_sample, tis_cap) (rlkit.lib.training.objectives.tis_weight; Yao et al. 2025).
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.core.errors import RlkitError
from rlkit.lib.training.objectives import clipped_objective, group_advantages, ratio, tis_weight, with_tis


class DAPO(Algorithm):
    needs = frozenset({"old_logp"})
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward
    min_samples = 2
    filter_groups = True
    tis_cap = None

    def __init__(self, clip_eps_low: float, clip_eps_high: float, eps: float, max_len: int | None,
                 cache_len: int | None):
        self.low, self.high, self.eps = clip_eps_low, clip_eps_high, eps
        self.max_len, self.cache_len = max_len, cache_len

    def advantages(self, rewards):
        return group_advantages(rewards, scale=True, eps=self.eps)

    def shape(self, lengths, max_new_tokens: int) -> dict:
        """lengths (P, G) completion tokens -> {"overlong": (P, G)} extra reward (soft overlong punishment)."""
        max_len = self.max_len or max_new_tokens
        cache = self.cache_len if self.cache_len is not None else max_len // 5
        L = lengths.float()
        soft = (max_len - cache - L) / max(cache, 1)  # >= 0 up to max_len - cache, <= -1 past max_len
        return {"overlong": soft.clamp(-1.0, 0.0)}  # so the clamp gives the three pieces above

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). Token-level mean over the minibatch."""
        obj, _ = clipped_objective(ratio(logp, extra["old_logp"]), adv[:, None], self.low, self.high)
        return -(obj * tis_weight(extra, self.tis_cap) * mask).sum() / extra["num_tokens"]

    def clipped(self, logp, mask, adv, extra):
        return clipped_objective(ratio(logp, extra["old_logp"]), adv[:, None], self.low, self.high)[1]


def dapo(clip_eps_low: float = 0.2, clip_eps_high: float = 0.28, eps: float = 1e-4, max_len: int | None = None,
         cache_len: int | None = None, tis_cap: float | None = None) -> DAPO:
    if not (0 < clip_eps_low < 1 and clip_eps_high > 0):
        raise RlkitError(f"algorithm dapo: clip_eps_low must be in (0, 1) and clip_eps_high > 0 "
                         f"(got {clip_eps_low}, {clip_eps_high})")
    if max_len is not None and max_len < 1 or cache_len is not None and cache_len < 0:
        raise RlkitError(f"algorithm dapo: max_len must be >= 1 and cache_len >= 0 (got {max_len}, {cache_len})")
    return with_tis(DAPO(clip_eps_low, clip_eps_high, eps, max_len, cache_len), tis_cap, "dapo")


@rlkit.hookimpl
def rlkit_algorithms():
    return {"dapo": dapo}
