"""Vanilla REINFORCE (Williams, 1992) with an optional baseline.

    A[i]  = r[i] - b
    loss  = -(1/S) * sum_i A[i] * sum_t logp[i, t] * mask[i, t]
where S is the number of sequences in the whole optimisation step (all
micro-batches, all ranks): the log-probability of each whole completion,
weighted by its advantage, averaged per sequence.

Baselines: `none` (b = 0, the default), `batch` (b = mean reward of this
step's batch), `ema` (b = a moving average of past batch means with `decay`;
the first step uses its own batch mean). No KL, no ratio, no clipping.

tis_cap (default null: off): truncated importance sampling, each token's term times the detached
min(p_train / p_sample, tis_cap) (rlkit.lib.training.objectives.tis_weight; Yao et al. 2025).
"""
import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.core.errors import RlkitError
from rlkit.lib.training.objectives import tis_weight, with_tis

BASELINES = ("none", "batch", "ema")


class Reinforce(Algorithm):
    needs = frozenset()
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward
    tis_cap = None

    def __init__(self, baseline: str, decay: float):
        self.baseline = baseline
        self.decay = decay
        self.ema: float | None = None  # the moving-average baseline, carried across steps

    def advantages(self, rewards):
        """(P, G) rewards -> (P, G) advantages r - b."""
        if self.baseline == "none":
            return rewards.clone()
        batch_mean = rewards.mean().item()
        if self.baseline == "batch":
            return rewards - batch_mean
        b = batch_mean if self.ema is None else self.ema
        self.ema = batch_mean if self.ema is None else self.decay * self.ema + (1 - self.decay) * batch_mean
        return rewards - b

    def loss(self, logp, mask, adv, extra):
        """logp, mask (B, T); adv (B,). Sequence log-probs weighted by advantage, averaged per sequence."""
        seq_logp = (logp * mask * tis_weight(extra, self.tis_cap)).sum(dim=1)  # (B,)
        return -(seq_logp * adv).sum() / extra["num_sequences"]

    def state_dict(self) -> dict:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state.get("ema")


def reinforce(baseline: str = "none", decay: float = 0.9, tis_cap: float | None = None) -> Reinforce:
    if baseline not in BASELINES:
        raise RlkitError(f"algorithm reinforce: baseline '{baseline}' is not valid (valid: {', '.join(BASELINES)})")
    if not 0.0 <= decay < 1.0:
        raise RlkitError(f"algorithm reinforce: decay must be in [0, 1), got {decay}")
    return with_tis(Reinforce(baseline, decay), tis_cap, "reinforce")


@rlkit.hookimpl
def rlkit_algorithms():
    return {"reinforce": reinforce}
