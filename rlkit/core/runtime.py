"""What library code needs from a run, and nothing about any stage: where tensors live, the ranks, the
compute dtype, the tracker, the plugins, the seed, how the training model spans the ranks.

    rt = ctx.runtime                                    # in a stage
    rt = Runtime("rlkit-eval", device, dtype, info, Tracker(), plugins)   # in a command (rlkit eval)
    result = run_task(rt, model, tokenizer, task, spec, examples=200, seed=rt.seed)

Evaluation and other library functions take a Runtime, so a command builds one directly instead of a
stand-in stage context.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from rlkit.core.dist import DistInfo, all_reduce_sum
from rlkit.core.parallelism import Parallelism
from rlkit.core.plugins import Plugins


@dataclass(frozen=True)
class Runtime:
    name: str  # whose work this is: the entry's name (log lines, error keys), or the command's
    device: torch.device
    dtype: torch.dtype  # compute dtype for autocast
    dist: DistInfo
    tracker: Any  # rlkit.core.track.Tracker
    plugins: Plugins  # for plugin lookups library code makes (a task's own reward, say)
    seed: int = 0  # the entry's seed (StageContext.seed()); 0 outside a run
    parallel: Parallelism = field(default_factory=Parallelism)  # the run's strategy (ddp, fsdp)

    def autocast(self):
        """bf16 autocast when the compute dtype is bf16; a no-op context in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t.clone())

    def mean_over_ranks(self, t: torch.Tensor) -> float:
        return all_reduce_sum(t.detach().clone().float()).item() / self.dist.world_size

    def ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap in DistributedDataParallel under torchrun (gradients averaged over ranks); as is otherwise."""
        if not self.dist.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module, last: bool):
        """Skip DDP's gradient all-reduce (FSDP's reduce-scatter) on every accumulation pass but the last."""
        if (own := self.parallel.no_sync(model, last)) is not None:
            return own
        if last or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()
