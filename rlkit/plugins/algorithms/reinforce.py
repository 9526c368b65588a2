"""Vanilla REINFORCE (Williams, 1992) with an optional baseline.

    A[i]  = r[i] - b
    loss  = -(1/S) * sum_i A[i] * sum_t logp[i, t] * mask[i, t]
where S is the number of sequences in the whole optimisation step (all
micro-batches, all ranks): the log-probability of each whole completion,
weighted by its advantage, averaged per sequence.

Baselines: `none` (b = 0, the default), `batch` (b = mean reward of this
step's batch), `ema` (b = a moving average of past batch means with `decay`;
the first step uses its own batch mean). No KL, no ratio, no clipping.
"""
import torch

import rlkit
from rlkit.lib.training.algorithm import Algorithm
from rlkit.core.errors import RlkitError

BASELINES = ("none", "batch", "ema")


class Reinforce(Algorithm):
    needs = frozenset()
    zero_advantage_inert = True  # a row with advantage 0 gets no gradient: the rl stage skips its backward

    def __init__(self, baseline: str, decay: float):
        self.baseline = baseline
        self.decay = decay
        self.ema: float | None = None  # the moving-average baseline, carried across steps

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """(P, G) rewards -> (P, G) advantages r - b."""
        if self.baseline == "none":
            return rewards.clone()
        batch_mean = rewards.mean().item()
        if self.baseline == "batch":
            return rewards - batch_mean
        b = batch_mean if self.ema is None else self.ema
        self.ema = batch_mean if self.ema is None else self.decay * self.ema + (1 - self.decay) * batch_mean
        return rewards - b

    def loss(self, logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, extra: dict) -> torch.Tensor:
        """logp, mask (B, T); adv (B,). Sequence log-probs weighted by advantage, averaged per sequence."""
        seq_logp = (logp * mask).sum(dim=1)  # (B,)
        return -(seq_logp * adv).sum() / extra["num_sequences"]

    def state_dict(self) -> dict:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state.get("ema")


def reinforce(baseline: str = "none", decay: float = 0.9) -> Reinforce:
    if baseline not in BASELINES:
        raise RlkitError(f"algorithm reinforce: baseline '{baseline}' is not valid (valid: {', '.join(BASELINES)})")
    if not 0.0 <= decay < 1.0:
        raise RlkitError(f"algorithm reinforce: decay must be in [0, 1), got {decay}")
    return Reinforce(baseline, decay)


@rlkit.hookimpl
def rlkit_algorithms():
    return {"reinforce": reinforce}
