"""How a training model spans the ranks, as a session sees it: an object the caller hands pipeline.run, as
it hands tracking, so core holds no sharding code. `rlkit run` passes the strategy `parallel:` names
(rlkit.lib.training.parallel: ddp, or FSDP2's fsdp); this base is ddp without extras.

    rollouts = parallel.prepare(model, optimizer, dtype, rollouts=True)   # Session.begin, before compile
    sync = parallel.no_sync(model, last)               # Runtime.no_sync; None: DDP's no_sync, if any
    state = parallel.full_state(model, keep=is_main)   # Session.save: whole tensors, whatever the strategy

Under ddp every rank holds the whole model and Session.begin wraps it in DistributedDataParallel
(Runtime.ddp); a `sharded` strategy splits it over the ranks instead, and checkpoints stay whole either way.
"""
from __future__ import annotations

import torch

from rlkit.core.errors import RlkitError


class Parallelism:
    """ddp without extras: the model as it is on every rank, its own state dicts in a checkpoint."""
    sharded = False  # split over the ranks: not wrapped in DDP, and a resumed optimizer state loads after prepare

    def prepare(self, model: torch.nn.Module, optimizer, dtype: torch.dtype, rollouts: bool):
        """Apply the strategy to the training model in place and point `optimizer` (or None) at the parameters
        that then exist; returns what gives rollouts their model (`.refresh(model) -> model`, `rollouts`
        only), or None: rollouts sample from the training model itself."""
        return None

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a whole (ddp-format) optimizer state, after prepare."""
        optimizer.load_state_dict(state)

    def no_sync(self, model: torch.nn.Module, last: bool):
        """The model's own way to skip gradient sync on accumulation passes but the last; None: it has none."""
        return None

    def full_state(self, model: torch.nn.Module, keep: bool) -> dict:
        """The model's state dict with whole tensors, on every rank's call; {} on a rank that does not `keep` it."""
        return {name: value.detach() for name, value in model.state_dict().items()} if keep else {}

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer, keep: bool) -> dict | None:
        """optimizer.state_dict() with whole moments, in parameter order; None on a rank that does not `keep` it."""
        state = optimizer.state_dict()
        return {"state": dict(sorted(state["state"].items())), "param_groups": state["param_groups"]} if keep else None


def default_for(section) -> Parallelism:
    """The strategy of a pipeline.run caller that passed none: ddp without extras, or one line when the
    `parallel:` section asks for more (fsdp, activation checkpointing), which only a passed strategy does."""
    if section.strategy != "ddp" or section.activation_checkpointing:
        raise RlkitError("parallel: no strategy was passed to pipeline.run for this section; pass "
                         "parallel=rlkit.lib.training.parallel.Strategy(cfg.parallel), as `rlkit run` does")
    return Parallelism()
