"""RLOO, REINFORCE leave-one-out (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740).

    A_i  = r_i - (1/(G-1)) sum_{j != i} r_j                 (each sample's baseline: the others' mean)
    loss = -(1/S) sum_i A_i sum_t logp_t                     (sequence-level REINFORCE)
S: sequences in the whole minibatch (all ranks). Leaves out: no ratio, no clip, no KL (on-policy).

tis_cap (default null: off): truncated importance sampling, each token's term times the detached
min(p_train / p_sample, tis_cap) (rlkit.lib.training.objectives.tis_weight; Yao et al. 2025).
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.lib.training.objectives import leave_one_out, tis_weight, with_tis


class RLOO(Algorithm):
    needs = frozenset()
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward
    min_samples = 2  # the baseline needs another sample
    tis_cap = None

    def advantages(self, rewards):
        return leave_one_out(rewards)

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). Sequence log-probs weighted by advantage, mean per sequence."""
        return -((logp * mask * tis_weight(extra, self.tis_cap)).sum(dim=1) * adv).sum() / extra["num_sequences"]


def rloo(tis_cap: float | None = None) -> RLOO:
    return with_tis(RLOO(), tis_cap, "rloo")


@rlkit.hookimpl
def rlkit_algorithms():
    return {"rloo": rloo}
