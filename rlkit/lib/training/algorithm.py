"""The algorithm contract: a base class with a default for every optional part.

An algorithm turns a step's (P, G) rewards into advantages and a micro-batch's log-probs into a loss
(docs/plugins.md). `Algorithm` names the rest of what the rl stage asks, each with its default: `needs`
(empty: no reference model), `zero_advantage_inert` (False: every row gets a backward),
`filter_groups` (False), `min_samples` (1), `clipped` (nothing clipped), `shape` (no reward terms),
`state_dict` / `load_state_dict` (no state) and `at` (where the next calls happen). The built-ins
subclass it; a plugin written without it (duck-typed, as in docs/plugins.md) works too: it is
adapted once, when the stage builds it.

What `loss` finds in `extra` (the minibatch's counts over all ranks, lengths, old_logp, ref_logp when
declared, sample_logp) is listed in docs/plugins.md under rlkit_algorithms.

The guard every plugin runs behind, and `check_contract`, are rlkit/lib/training/guard.py (it needs torch;
this module does not, so listing plugins loads none).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Algorithm:
    """Base class of an algorithm plugin: subclass it and write `advantages` and `loss`; the rest has defaults."""

    needs: frozenset = frozenset()  # what loss() reads besides counts: "old_logp", "ref_logp", "sample_logp"
    zero_advantage_inert: bool = False  # True: a row with advantage 0 gets no gradient from loss()
    filter_groups: bool = False  # True: drop groups whose rewards all agree and refill (DAPO's dynamic sampling)
    min_samples: int = 1  # completions per prompt it needs (2 for anything group-relative)

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """(P, G) rewards -> (P, G) advantages."""
        raise NotImplementedError

    def loss(self, logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, extra: dict) -> torch.Tensor:
        """logp, mask (B, T); adv (B,) -> a scalar: this micro-batch's share of the minibatch's loss."""
        raise NotImplementedError

    def clipped(self, logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, extra: dict) -> torch.Tensor:
        """(B, T) bool: where the clip acted (tracked as clip_frac). Default: nowhere."""
        return logp.new_zeros(logp.shape, dtype=bool)

    def shape(self, lengths: torch.Tensor, max_new_tokens: int) -> dict:
        """lengths (P, G) -> {name: (P, G)} reward terms added before advantages. Default: none."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the algorithm (a moving baseline, say). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""

    def at(self, text: str) -> None:
        """Where the next calls happen (e.g. "at rl step 3"); the guard names it in its error lines."""
