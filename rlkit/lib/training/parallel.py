"""How a training model spans the ranks: `parallel.strategy` ddp (a full replica per rank, gradients
all-reduced) or fsdp (each rank holds 1/N of every weight, gradient and optimizer moment). `Strategy` is the
object `rlkit run` hands pipeline.run for the `parallel:` section (the contract: rlkit.core.parallelism).

fsdp is PyTorch's FSDP2 (torch.distributed.fsdp.fully_shard; the recipe of the FSDP2 docs and torchtitan's
apply_fsdp): each shard unit (the policy's optional `shard_units()`, else the largest ModuleList: a
transformer's blocks, a Hugging Face model's decoder layers) is sharded on its own, then the root (the
embedding, final norm and head). A unit's weights are all-gathered just before its forward and backward
and freed after; gradients are reduce-scattered and averaged over ranks, as DDP's all-reduce averages them,
so a stage's loss scaling is the same under both. With a bf16 compute dtype the MixedPrecisionPolicy gathers
and computes in bf16 and reduces in fp32; the sharded weights stay fp32. `activation_checkpointing`
recomputes each unit's activations in backward (torch.utils.checkpoint, non-reentrant); `cpu_offload` keeps
the shards and their optimizer state in host memory (CPUOffloadPolicy).

fully_shard replaces every parameter by a sharded one (a DTensor), so an optimizer built before it is
pointed at the new parameters by name (`rebind`) and its saved state is cut to each rank's shard.
Under fsdp every rank saves its own pieces (sharded_checkpoint: DCP, no gather); such a checkpoint resumes
under any number of ranks, under ddp, and is read whole by export/eval/chat/serve; a ddp checkpoint resumes
under fsdp, its optimizer state cut to each rank's shard. Under one process fsdp is a no-op.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from rlkit.core.checkpoint import read_optimizer
from rlkit.core.dist import all_reduce_max, dist_info
from rlkit.core.parallelism import Parallelism
from rlkit.lib.training import sharded_checkpoint

STRATEGIES = ("ddp", "fsdp")


class Strategy(Parallelism):
    """The `parallel:` section applied to a session's model: fsdp shards it over more than one rank (under one
    process it is ddp); activation checkpointing applies under either."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.sharded = sharded(cfg, dist_info().distributed)

    def prepare(self, model: nn.Module, optimizer, dtype: torch.dtype, rollouts: bool) -> Gathered | None:
        """fsdp with `rollouts`: keep a copy in the compute dtype to sample from (made before sharding)."""
        gathered = Gathered(model, dtype) if self.sharded and rollouts else None
        if self.cfg.activation_checkpointing:
            checkpoint_activations(model)
        if self.sharded:
            names = param_names(model)
            shard(model, dtype, self.cfg.cpu_offload)
            if optimizer is not None:
                rebind(optimizer, names, model)
        return gathered

    def no_sync(self, model: nn.Module, last: bool):
        return no_sync(model, last)

    def save(self, stage_dir: Path, step: int, model: nn.Module, optimizer, meta: dict) -> None:
        """fsdp: every rank writes its own pieces (sharded_checkpoint); ddp: rank 0 the whole state."""
        if self.sharded:
            sharded_checkpoint.save(stage_dir, step, model, optimizer, meta)
        else:
            super().save(stage_dir, step, model, optimizer, meta)

    def load_optimizer(self, path: Path, model: nn.Module, optimizer, verify: bool) -> None:
        """A sharded checkpoint through DCP, into whatever layout the parameters have; a whole one (ddp's)
        as it is, or under fsdp cut to this rank's shards."""
        if sharded_checkpoint.is_sharded(path):
            sharded_checkpoint.load_optimizer(path, model, optimizer, verify)
        elif self.sharded and (state := read_optimizer(path, verify=verify)) is not None:
            load_optimizer_state(optimizer, state)
        elif not self.sharded:
            super().load_optimizer(path, model, optimizer, verify)


def sharded(cfg, distributed: bool) -> bool:
    """Whether this run shards its training model: fsdp chosen and more than one rank."""
    return cfg.strategy == "fsdp" and distributed


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one: the policy's own `shard_units()`, else the items of its largest
    ModuleList (by parameter count), else none (the root alone is one unit)."""
    own = getattr(model, "shard_units", None)
    if callable(own):
        return list(own())
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))) if lists else []


def checkpoint_activations(model: nn.Module) -> None:
    """Each shard unit's forward recomputed in backward instead of kept (its names are unchanged)."""
    from torch.utils.checkpoint import checkpoint

    for unit in shard_units(model):
        unit.forward = functools.partial(checkpoint, unit.forward, use_reentrant=False)


def shard(model: nn.Module, dtype: torch.dtype, cpu_offload: bool) -> None:
    """fully_shard every unit, then the root, in place (module docstring)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == torch.bfloat16 else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    options = dict(mp_policy=mp, offload_policy=offload)
    for unit in shard_units(model):
        fully_shard(unit, **options)
    fully_shard(model, **options)


def param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def rebind(optimizer: torch.optim.Optimizer, names: dict[int, str], model: nn.Module) -> None:
    """Point an optimizer built on the unsharded model at the sharded parameters of the same names."""
    now = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [now[names[id(p)]] for p in group["params"]]


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a whole (DDP-format) optimizer state into an optimizer over sharded parameters: each moment
    shaped like its parameter is cut to this rank's shard, with no communication."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    cut = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        cut[i] = {k: distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements,
                                       src_data_rank=None)
                  if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape and k != "step" else v
                  for k, v in s.items()}
    optimizer.load_state_dict({"state": cut, "param_groups": state["param_groups"]})


def no_sync(model: nn.Module, last: bool):
    """FSDP2's counterpart of DDP's no_sync: no reduce-scatter on accumulation passes but the last. FSDP2
    reads the flag in backward, which a stage may call after leaving the context (DDP reads it in forward),
    so it is set for this pass and stays so until the next pass sets it; the last pass sets it back on.
    None for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return None
    model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


class Gathered:
    """The rollouts' full-weight copy of a sharded model, stored in the compute dtype: made once from the
    model before sharding, refreshed by `refresh` (every rank, collectively) once per rl step: each
    parameter's shards are cast to the compute dtype, then all-gathered into the copy's weight, so no rank
    ever holds a second whole fp32 copy."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.model = copy.deepcopy(model).to(dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def refresh(self, sharded_model: nn.Module) -> nn.Module:
        source = dict(sharded_model.named_parameters())
        for name, p in self.model.named_parameters():
            value = source[name].detach()
            p.copy_(value.to(p.dtype).full_tensor() if isinstance(value, DTensor) else value)
        return self.model


@torch.no_grad()
def even_forwards(model: nn.Module, done: int, device: torch.device) -> None:
    """Under fsdp every forward is a collective (each unit's all-gather), so ranks must run as many: after a
    loop of `done` forwards without autograd whose count differs by rank (the rl stage's old_logp pass and
    inert rows), the ranks short of the most run forwards of one token. Nothing (no communication) otherwise."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return
    x0 = torch.zeros(1, 1, dtype=torch.long, device=device)
    for _ in range(all_reduce_max(done, device) - done):
        model(x0)
