"""Sharded checkpoints of a model split over the ranks (parallel.strategy=fsdp): every rank writes its own
pieces with torch.distributed.checkpoint (DCP); nothing is gathered to one rank and nothing is pickled.

Layout (the sharded form of rlkit.core.checkpoint's):
    step_000123/model/shard-0000R-model-00001-of-00001.safetensors   rank R-1's pieces of the weights
    step_000123/optimizer/shard-0000R-...                             its pieces of the optimizer's tensors
    step_000123/meta.json   as in a whole checkpoint, with the size and sha256 of every shard, and under
                            "checkpoint" -> "optimizer" the optimizer's other values (lr, betas, ...)
DCP's HuggingFaceStorageWriter(save_distributed=True) writes each rank's local pieces of every DTensor (a
tensor every rank holds whole, once) into one safetensors file per rank whose header records each piece's
offsets in the whole tensor, as JSON; it writes no `.metadata` pickle. HuggingFaceStorageReader rebuilds
DCP's metadata from those headers and reads the pieces with safe_open: nothing is unpickled. DCP would
pickle non-tensor values (its BYTE_IO items, read back with torch.load(weights_only=False)), so none are
stored that way: the model's state must be tensors only, the optimizer's other values go to meta.json.

Save (every rank together; the atomic protocol of rlkit.core.checkpoint): rank 0 makes the hidden folder,
named after its pid, which every rank learns; every rank writes its shards into it (DCP fsyncs them) and
their sizes and sha256 into a small JSON file; after a barrier rank 0 merges those into meta.json and
renames the folder, and a last barrier lets every rank read it.

Load: the weights are read whole by rlkit.core.checkpoint.load_checkpoint, for every reader (a resume,
the next stage, export, eval, chat, serve): a model is built whole on each rank before fully_shard cuts
it. The optimizer state is read by DCP into the layout of the loading ranks (get/set_optimizer_state_dict,
keyed by parameter name), so a checkpoint of N fsdp ranks resumes under M ranks, or under ddp or one
process, where every tensor is whole.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

from rlkit.core import checkpoint as ckpt
from rlkit.core.dist import all_reduce_max, barrier, dist_info
from rlkit.core.errors import RlkitError
from rlkit.core.files import writing

FLAT = StateDictOptions(flatten_optimizer_state_dict=True)  # {"state.<name>.exp_avg": .., "param_groups.<name>.lr": ..}
MODEL, OPTIMIZER = ckpt.SHARDS


def is_sharded(path) -> bool:
    """Whether checkpoint folder `path` was saved in pieces."""
    return (Path(path) / MODEL).is_dir()


def save(stage_dir, step: int, model: torch.nn.Module, optimizer, meta: dict) -> None:
    """Write stage_dir/step_{step:06d}/ in pieces, on every rank's call (module docstring)."""
    rank, final = dist_info().rank, Path(stage_dir) / f"step_{step:06d}"
    state = tensors_only(model.state_dict())  # checked before anything is written
    flat = {} if optimizer is None else get_optimizer_state_dict(model, optimizer, options=FLAT)
    values = _json({k: v for k, v in flat.items() if not torch.is_tensor(v)}, final)
    pid = all_reduce_max(os.getpid() if rank == 0 else 0, _device())
    tmp = final.parent / f".tmp-{final.name}-{pid}"  # the name ckpt.open_save gives rank 0's
    if rank == 0:
        ckpt.open_save(stage_dir, step, meta, pid)
    barrier()
    with writing(final):
        _write(tmp / MODEL, state)
        if optimizer is not None:
            _write(tmp / OPTIMIZER, {k: v for k, v in flat.items() if torch.is_tensor(v)})
        mine = [p for part in (MODEL, OPTIMIZER) for p in (tmp / part).glob(f"shard-{rank + 1:05d}-*")]
        records = {str(p.relative_to(tmp)): ckpt.file_record(p) for p in mine}
        (tmp / f".files-{rank}.json").write_text(json.dumps(records))
    barrier()
    if rank == 0:
        _commit(tmp, final, step, meta, values)
    barrier()  # every rank may read it now


def _commit(tmp: Path, final: Path, step: int, meta: dict, values: dict) -> None:
    """Rank 0: every rank's file records into meta.json, then the atomic rename."""
    try:
        with writing(final):
            files = {}
            for f in sorted(tmp.glob(".files-*.json")):
                files.update(json.loads(f.read_text()))
                f.unlink()
            written = {str(p.relative_to(tmp)) for part in (MODEL, OPTIMIZER) for p in (tmp / part).glob("*")}
            if written != set(files):  # a shard no rank recorded would load as missing pieces
                raise RlkitError(f"sharded save of {final}: files {sorted(written ^ set(files))} were not recorded")
            ckpt.write_meta(tmp, step, files, meta, optimizer=values)
            ckpt.commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_optimizer(path, model: torch.nn.Module, optimizer, verify: bool) -> None:
    """Checkpoint `path`'s optimizer state into `optimizer`, in the layout its parameters have now (sharded
    or whole), on every rank's call. `verify`: check the shards' hashes first."""
    path = Path(path)
    meta = ckpt.verify_checkpoint(path, files=[])
    shards = [f for f in meta["checkpoint"]["files"] if f.startswith(f"{OPTIMIZER}/")]
    if not shards:
        return  # saved without an optimizer
    if verify:
        ckpt.verify_checkpoint(path, files=shards)
    flat = get_optimizer_state_dict(model, optimizer, options=FLAT)
    tensors = {k: v for k, v in flat.items() if torch.is_tensor(v)}
    try:
        with warnings.catch_warnings():  # one process: DCP warns that it loads without a process group
            warnings.simplefilter("ignore")
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path / OPTIMIZER)))
    except CheckpointException as e:  # a BaseException holding each failed rank's (error, traceback)
        why = str(next(iter(e.failures.values()))[0]).strip().splitlines()[-1][:200]
        raise RlkitError(f"{path / OPTIMIZER} cannot be read into this optimizer ({why}); "
                         "use a checkpoint rlkit saved, with this optimizer") from None
    values = {k: tuple(v) if isinstance(flat.get(k), tuple) else v  # JSON gave lists back
              for k, v in meta["checkpoint"].get("optimizer", {}).items()}
    set_optimizer_state_dict(model, optimizer, {**values, **tensors}, options=FLAT)


def tensors_only(state: dict) -> dict:
    """`state` if it holds tensors only: DCP would pickle anything else."""
    for k, v in state.items():
        if not torch.is_tensor(v):
            raise RlkitError(f"sharded checkpoint: the model's state_dict holds {k!r}, a {type(v).__name__}; "
                             "a sharded save stores tensors only (use parallel.strategy=ddp to save it)")
    return state


def _write(folder: Path, state: dict) -> None:
    with warnings.catch_warnings():  # one process: DCP warns that it saves without a process group
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))


def _json(values: dict, final: Path) -> dict:
    try:
        json.dumps(values)
    except (TypeError, ValueError) as e:
        raise RlkitError(f"sharded save of {final}: an optimizer value is not a number, string or list ({e}); "
                         "a sharded save keeps them in meta.json") from None
    return values


def _device() -> torch.device:
    """Where a collective's tensor must live: the GPU under nccl, else the CPU."""
    if torch_dist.is_initialized() and torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
