"""GRPO as DeepSeekMath wrote it (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3).

For a group of G completions o_i of one prompt with rewards r:
    A_i    = (r_i - mean(r)) / (std(r) + eps)                 (std unbiased, eps = 1e-4; shared by o_i's tokens)
    rho_t  = exp(logp_t - old_logp_t)                          (old: the policy that sampled the rollouts)
    obj_t  = min(rho_t * A_i, clip(rho_t, 1 - clip_eps, 1 + clip_eps) * A_i)
    k3_t   = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1
    loss   = -(1/S) sum_i (1/|o_i|) sum_t (obj_t - kl_coef * k3_t)
S: sequences in the whole minibatch (all micro-batches, all ranks). The KL is to a frozen reference
(stages.rl.reference, by default the checkpoint the stage started from), added to the loss rather than
to the reward. Leaves out: the paper's iterative reward-model retraining (its reward is a plugin here)
and process supervision. With one update per rollout batch rho = 1 and the clip never acts; use
stages.rl.updates (epochs, minibatches) for the off-policy updates the clip is for.
tis_cap (default null: off): truncated importance sampling, each token's term times the detached
min(p_train / p_sample, tis_cap) (rlkit.lib.training.objectives.tis_weight; Yao et al. 2025).
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.core.errors import RlkitError
from rlkit.lib.training.objectives import (clipped_objective, group_advantages, k3, per_sequence_mean, ratio,
                                          tis_weight, with_tis)


class DeepSeekGRPO(Algorithm):
    needs = frozenset({"old_logp", "ref_logp"})
    min_samples = 2
    tis_cap = None

    def __init__(self, clip_eps: float, kl_coef: float, eps: float):
        self.clip_eps, self.kl_coef, self.eps = clip_eps, kl_coef, eps
        self.zero_advantage_inert = kl_coef == 0  # else the KL term moves rows whose advantage is 0

    def advantages(self, rewards):
        """(P, G) -> (P, G): group-normalised rewards."""
        return group_advantages(rewards, scale=True, eps=self.eps)

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). This micro-batch's share of the minibatch's per-sequence mean."""
        obj, _ = clipped_objective(ratio(logp, extra["old_logp"]), adv[:, None], self.clip_eps, self.clip_eps)
        per_token = obj * tis_weight(extra, self.tis_cap) - self.kl_coef * k3(extra["ref_logp"], logp)  # (B, T)
        return -per_sequence_mean(per_token, mask).sum() / extra["num_sequences"]

    def clipped(self, logp, mask, adv, extra):
        """(B, T) bool: tokens whose gradient the clip stops (the rl stage tracks their share)."""
        return clipped_objective(ratio(logp, extra["old_logp"]), adv[:, None], self.clip_eps, self.clip_eps)[1]


def deepseek_grpo(clip_eps: float = 0.2, kl_coef: float = 0.04, eps: float = 1e-4,
                  tis_cap: float | None = None) -> DeepSeekGRPO:
    if not 0 < clip_eps < 1:
        raise RlkitError(f"algorithm deepseek_grpo: clip_eps must be in (0, 1), got {clip_eps}")
    if kl_coef < 0 or eps <= 0:
        raise RlkitError(f"algorithm deepseek_grpo: kl_coef must be >= 0 and eps > 0 (got {kl_coef}, {eps})")
    return with_tis(DeepSeekGRPO(clip_eps, kl_coef, eps), tis_cap, "deepseek_grpo")


@rlkit.hookimpl
def rlkit_algorithms():
    return {"deepseek_grpo": deepseek_grpo}
