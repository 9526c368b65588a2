"""nanochat's simplified GRPO.

For P prompts with G sampled completions each:
    A[p, g] = r[p, g] - mean_g r[p, g]                     (mean-shift, no division by the std)
    loss    = -sum_{b,t} logp[b, t] * A[b] * mask[b, t] / N
where N is the number of sampled tokens in the whole optimisation step (all
micro-batches, all ranks), so the gradient is the same whatever the device
batch size or the number of processes (token-level normalisation, as in DAPO).

What it leaves out, on purpose: no trust region, no KL penalty to a
reference model, and, being on-policy (one gradient step per batch of
rollouts), no importance ratio and no clipping. So it needs neither the
sampling policy's nor a reference model's log-probs.

tis_cap (default null: off): truncated importance sampling, each token's term times the detached
min(p_train / p_sample, tis_cap) (rlkit.lib.training.objectives.tis_weight; Yao et al. 2025).
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.lib.training.objectives import tis_weight, with_tis


class GRPO(Algorithm):
    needs = frozenset()  # no old_logp, no ref_logp
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward
    min_samples = 2  # advantages compare samples within a group
    tis_cap = None

    def advantages(self, rewards):
        """(P, G) rewards -> (P, G) advantages: each reward minus its group's mean."""
        return rewards - rewards.mean(dim=1, keepdim=True)

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). This micro-batch's share of the step's token-mean objective."""
        return -(logp * mask * adv[:, None] * tis_weight(extra, self.tis_cap)).sum() / extra["num_tokens"]


def grpo(tis_cap: float | None = None) -> GRPO:
    return with_tis(GRPO(), tis_cap, "grpo")


@rlkit.hookimpl
def rlkit_algorithms():
    return {"grpo": grpo}
