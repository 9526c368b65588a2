"""Dr. GRPO, "GRPO done right" (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783).

    A_i   = r_i - mean(r)                                  (no division by the std: no difficulty bias)
    rho_t = exp(logp_t - old_logp_t)
    obj_t = min(rho_t * A_i, clip(rho_t, 1 - clip_eps, 1 + clip_eps) * A_i)
    loss  = -sum_{i,t} obj_t / (S * max_new_tokens)         (a constant normaliser: no length bias)
S: sequences in the whole minibatch (all micro-batches, all ranks); max_new_tokens: the rollout's.
Leaves out: the KL term (the paper drops it for rule-based rewards) and the paper's prompt template.

tis_cap (default null: off): truncated importance sampling, each token's term times the detached
min(p_train / p_sample, tis_cap) (rlkit.lib.training.objectives.tis_weight; Yao et al. 2025).
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.core.errors import RlkitError
from rlkit.lib.training.objectives import clipped_objective, group_advantages, ratio, tis_weight, with_tis


class DrGRPO(Algorithm):
    needs = frozenset({"old_logp"})
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward
    min_samples = 2
    tis_cap = None

    def __init__(self, clip_eps: float):
        self.clip_eps = clip_eps

    def advantages(self, rewards):
        """(P, G) -> (P, G): each reward minus its group's mean."""
        return group_advantages(rewards)

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). Token sum over the constant S * max_new_tokens."""
        obj, _ = clipped_objective(ratio(logp, extra["old_logp"]), adv[:, None], self.clip_eps, self.clip_eps)
        obj = obj * tis_weight(extra, self.tis_cap)
        return -(obj * mask).sum() / (extra["num_sequences"] * extra["max_new_tokens"])

    def clipped(self, logp, mask, adv, extra):
        return clipped_objective(ratio(logp, extra["old_logp"]), adv[:, None], self.clip_eps, self.clip_eps)[1]


def dr_grpo(clip_eps: float = 0.2, tis_cap: float | None = None) -> DrGRPO:
    if not 0 < clip_eps < 1:
        raise RlkitError(f"algorithm dr_grpo: clip_eps must be in (0, 1), got {clip_eps}")
    return with_tis(DrGRPO(clip_eps), tis_cap, "dr_grpo")


@rlkit.hookimpl
def rlkit_algorithms():
    return {"dr_grpo": dr_grpo}
