"""Processes, devices and seeds: the same code runs alone or under torchrun.

The environment decides: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and we join
a process group (gloo on CPU, nccl on CUDA); a plain `python` run has no
process group at all. Rank-0-only concerns go through `print0` so loops carry
no `if rank == 0` clutter.
"""
from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from rlkit.core.errors import RlkitError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Read torchrun's environment; defaults describe a single process."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def init(device_name: str) -> tuple[DistInfo, torch.device]:
    """Pick the device (one per local rank) and join the process group when under torchrun."""
    info = dist_info()
    device = pick_device(device_name, info.local_rank)
    if info.distributed and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return info, device


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` takes CUDA, then MPS, then CPU; an explicit device that is absent is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RlkitError("device: cuda was asked for but no CUDA device is visible (valid here: cpu, auto)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise RlkitError("device: mps was asked for but is not available (valid here: cpu, auto)")
    if name not in ("cpu", "mps"):
        raise RlkitError(f"device: '{name}' is not a device (valid: auto, cpu, cuda, mps)")
    return torch.device(name)


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: `auto` is bf16 where bf16 matmuls are fast (CUDA Ampere+, CPUs with
    AVX512-BF16 or AMX, where they run ~4x fp32), else fp32."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name != "auto":
        raise RlkitError(f"model.dtype: '{name}' is not valid (valid: auto, float32, bfloat16)")
    return torch.bfloat16 if fast_bf16(device) else torch.float32


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast on this device: CUDA with bf16 support, or a CPU with AVX512-BF16 or
    AMX. Elsewhere (e.g. AVX2-only CPUs) torch emulates them: ~9x slower than fp32 in nn.Linear's layout
    (x @ W.t()), ~150x in a plain a @ b (10.5 / 0.6 against 95 GFLOP/s, one thread of an AVX2 Zen 3)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_fast_bf16()


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def seed_everything(seed: int) -> None:
    """One seed fixes python's and torch's generators (data order and init build on it)."""
    random.seed(seed)
    torch.manual_seed(seed)


def print0(*args, **kwargs) -> None:
    if dist_info().is_main:
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will read)."""
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (a no-op in a single process)."""
    if torch_dist.is_initialized():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_reduce_max(value, device: torch.device, kind=int):
    """The largest of a number over ranks (itself in one process), as `kind`; with kind=bool: whether a flag is
    set on any rank (all ranks call it together)."""
    if not torch_dist.is_initialized():
        return value
    t = torch.tensor(float(value), device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return kind(t.item())
