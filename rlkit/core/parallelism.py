"""How a training model spans the ranks, as a session sees it: an object the caller hands pipeline.run, as
it hands tracking, so core holds no sharding code. `rlkit run` passes the strategy `parallel:` names
(rlkit.lib.training.parallel: ddp, or FSDP2's fsdp); this base is ddp without extras.

    rollouts = parallel.prepare(model, optimizer, dtype, rollouts=True)   # Session.begin, before compile
    sync = parallel.no_sync(model, last)               # Runtime.no_sync; None: DDP's no_sync, if any
    parallel.save(stage_dir, step, model, optimizer, meta)        # Session.save, every rank
    parallel.load_optimizer(path, model, optimizer, verify)       # a resume, every rank

Under ddp every rank holds the whole model and Session.begin wraps it in DistributedDataParallel
(Runtime.ddp), and rank 0 saves it whole; a `sharded` strategy splits it over the ranks instead, and may
save it in pieces (rlkit.core.checkpoint's layout), which load_checkpoint reads whole.
"""
from __future__ import annotations

import torch

from rlkit.core import checkpoint as ckpt
from rlkit.core.dist import dist_info
from rlkit.core.errors import RlkitError


class Parallelism:
    """ddp without extras: the model as it is on every rank, its own state dicts in a checkpoint."""
    sharded = False  # split over the ranks: not wrapped in DDP, and a resumed optimizer state loads after prepare

    def prepare(self, model: torch.nn.Module, optimizer, dtype: torch.dtype, rollouts: bool):
        """Apply the strategy to the training model in place and point `optimizer` (or None) at the parameters
        that then exist; returns what gives rollouts their model (`.refresh(model) -> model`, `rollouts`
        only), or None: rollouts sample from the training model itself."""
        return None

    def no_sync(self, model: torch.nn.Module, last: bool):
        """The model's own way to skip gradient sync on accumulation passes but the last; None: it has none."""
        return None

    def save(self, stage_dir, step: int, model: torch.nn.Module, optimizer, meta: dict) -> None:
        """Checkpoint stage_dir/step_{step:06d}/ on every rank's call: here rank 0 saves its replica's state dicts."""
        if dist_info().is_main:
            state = None if optimizer is None else optimizer.state_dict()
            state = state and {"state": dict(sorted(state["state"].items())), "param_groups": state["param_groups"]}
            ckpt.save_checkpoint(stage_dir, step, model.state_dict(), state, meta)

    def load_optimizer(self, path, model: torch.nn.Module, optimizer, verify: bool) -> None:
        """Checkpoint `path`'s optimizer state (if it saved one) into `optimizer`, on every rank's call: before
        prepare, or after it when `sharded`. `verify`: check the file's hash first."""
        if (state := ckpt.read_optimizer(path, verify=verify)) is not None:
            optimizer.load_state_dict(state)


def default_for(section) -> Parallelism:
    """The strategy of a pipeline.run caller that passed none: ddp without extras, or one line when the
    `parallel:` section asks for more (fsdp, activation checkpointing), which only a passed strategy does."""
    if section.strategy != "ddp" or section.activation_checkpointing:
        raise RlkitError("parallel: no strategy was passed to pipeline.run for this section; pass "
                         "parallel=rlkit.lib.training.parallel.Strategy(cfg.parallel), as `rlkit run` does")
    return Parallelism()
