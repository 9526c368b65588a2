"""Atomic checkpoints for one stage: save, verify, load, find the latest.

Layout (a stage folder such as runs/<name>/pretrain/):

    step_000123/
        model.safetensors   weights (safetensors: no pickle)
        optimizer.pt        optimizer.state_dict(), read back with torch.load(weights_only=True); absent if None
        meta.json           the caller's dict (config, step, data position, RNG states, ...) plus our
                            "checkpoint" record: format, step, and the size and sha256 of every other file
        model/, optimizer/  instead of the first two, in a sharded save (rlkit.lib.training.sharded_checkpoint):
                            a safetensors file per rank, its header the offsets of its pieces; read whole here

The atomic protocol, so a crash never leaves a half checkpoint under a final name:
    1. write every file into a hidden sibling `.tmp-step_000123-<pid>/`, fsync each file, fsync that folder;
    2. os.rename it to `step_000123/` (one atomic step on POSIX: the name appears complete or not at all);
    3. fsync the stage folder, so the rename itself survives a power cut.
A crash before 2 leaves only the tmp folder: readers ignore names starting with '.', and the next save
removes leftovers (unless their pid is another live process). Damage after the fact (a truncated or
edited file, a bad disk) is caught by the sizes and hashes in meta.json: load_checkpoint raises RlkitError
naming the file, and latest_checkpoint skips to the newest checkpoint that is still whole.

Loading never unpickles arbitrary objects: safetensors + torch.load(weights_only=True) + json.
Only rank 0 should call save_checkpoint; a sharded save uses open_save, write_meta and commit.
"""
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlkit.core.errors import RlkitError
from rlkit.core.files import fsync_dir, remove_leftovers, sha256, writing

MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.safetensors", "optimizer.pt", "meta.json"
SHARDS = ("model", "optimizer")  # a sharded save's folders of per-rank safetensors
FORMAT = 1
_STEP_DIR = re.compile(r"step_(\d+)")


# ----------------------------------------------------------------------------- save

def save_checkpoint(stage_dir, step: int, model_state: dict, optimizer_state: dict | None, meta: dict) -> Path:
    """Write stage_dir/step_{step:06d}/ atomically (see module docstring) and return its path.

    model_state: {name: Tensor} (e.g. model.state_dict()); tied or non-contiguous tensors are cloned.
    optimizer_state: optimizer.state_dict() or None; may hold only tensors, numbers, strings, None,
        dtypes, devices, and lists / tuples / dicts of these.
    meta: JSON-serialisable dict (tuples come back as lists, int keys as strings).
    Saving a step that already exists replaces it.
    """
    tensors = _saveable_tensors(model_state)  # check everything before writing anything
    optimizer_state = None if optimizer_state is None else _plain(optimizer_state, "optimizer_state")
    tmp, final = open_save(stage_dir, step, meta, os.getpid())
    try:
        with writing(final):  # a full disk or a read-only folder: one line naming the checkpoint
            _write_files(tmp, step, tensors, optimizer_state, meta)
            commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a hard crash leaves it instead: the next save removes it
        raise
    return final


def open_save(stage_dir, step: int, meta: dict, pid: int) -> tuple[Path, Path]:
    """Check `step` and `meta`, then make the hidden folder a save writes into: (tmp, final). `pid`: the
    process that commits it (a sharded save's rank 0)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise RlkitError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    stage_dir = Path(stage_dir)
    final, tmp = stage_dir / f"step_{step:06d}", stage_dir / f".tmp-step_{step:06d}-{pid}"
    if "checkpoint" in meta:
        raise RlkitError("save_checkpoint: meta key 'checkpoint' is reserved for rlkit's file record; rename it")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise RlkitError(f"save_checkpoint: meta for {final} is not JSON-serialisable ({e}); "
                         "store numbers, strings, lists and dicts (see rng_state() for RNG states)") from None
    with writing(final):
        stage_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(stage_dir)
        tmp.mkdir()
    return tmp, final


def _write_files(folder: Path, step: int, tensors: dict, optimizer_state: dict | None, meta: dict) -> None:
    """model.safetensors, optimizer.pt, then meta.json recording their sizes and hashes; all fsynced."""
    save_file(tensors, str(folder / MODEL_FILE))
    files = [MODEL_FILE]
    if optimizer_state is not None:
        torch.save(optimizer_state, folder / OPTIMIZER_FILE)
        files.append(OPTIMIZER_FILE)
    for name in files:
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
    write_meta(folder, step, {f: file_record(folder / f) for f in files}, meta)


def write_meta(folder: Path, step: int, files: dict, meta: dict, **record) -> None:
    """meta.json: `meta` plus our record of `files` ({name: file_record}) and `record`; fsynced, then the folder."""
    with open(folder / META_FILE, "w") as f:
        json.dump({**meta, "checkpoint": {"format": FORMAT, "step": step, "files": files, **record}}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder)


def commit(tmp: Path, final: Path) -> None:
    """Rename tmp to final (the commit point); an existing final (a step saved again) is replaced."""
    old = None
    if final.exists():  # e.g. the same step saved again after a resume: move it aside, drop it after
        old = final.parent / f".tmp-replaced-{final.name}-{os.getpid()}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _saveable_tensors(state: dict) -> dict:
    """CPU, contiguous tensors that own their memory: what safetensors.save_file accepts."""
    out, seen = {}, set()
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise RlkitError(f"save_checkpoint: model_state must map str -> Tensor; {k!r} is {type(v).__name__}")
        t = v.detach().cpu()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or not t.is_contiguous() or t.nbytes != storage.nbytes():
            t = t.contiguous().clone()  # tied weight or a view: give it its own storage
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _plain(obj, where: str):
    """A copy of obj rebuilt from builtin containers; RlkitError if torch.load(weights_only=True) could not read it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise RlkitError(f"save_checkpoint: {where} is a {type(obj).__name__}, which torch.load(weights_only=True) "
                     "cannot read back; use tensors, numbers, strings, lists or dicts")


def file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


# ----------------------------------------------------------------------------- verify / load

def verify_checkpoint(path, files: list[str] | None = None) -> dict:
    """Check meta.json and the sizes + sha256 of `files` (default: all recorded); return meta.json's dict.

    Raises RlkitError naming the damaged file.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        hint = "; it is a stage folder, use latest_checkpoint()" if any(_step_dirs(path)) else ""
        raise RlkitError(f"{meta_path} is missing: {path} is not a complete checkpoint{hint}")
    try:
        meta = json.loads(meta_path.read_text())
        record = meta["checkpoint"]
        recorded = record["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise RlkitError(f"{meta_path} is damaged ({type(e).__name__}: {e}); use an earlier checkpoint") from None
    for name in recorded if files is None else files:
        f = path / name
        if name not in recorded:
            raise RlkitError(f"{f} is not recorded in {meta_path}; this checkpoint was saved without it")
        want = recorded[name]
        if not f.is_file():
            raise RlkitError(f"{f} is missing (meta.json records {want['bytes']} bytes); use an earlier checkpoint")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise RlkitError(f"{f} is damaged: {size} bytes, expected {want['bytes']} (truncated?); "
                             "use an earlier checkpoint")
        if sha256(f) != want["sha256"]:
            raise RlkitError(f"{f} is damaged: its sha256 does not match meta.json (changed after saving); "
                             "use an earlier checkpoint")
    return meta


def load_checkpoint(path, device="cpu", load_optimizer: bool = True, load_model: bool = True,
                    verify: bool = True) -> tuple[dict | None, dict | None, dict]:
    """Verify, then read a checkpoint folder: (model_state or None, optimizer_state or None, meta).

    model_state tensors are placed on `device`; optimizer tensors too (optimizer.load_state_dict then
    moves them next to their parameters). meta is the dict given to save_checkpoint (after JSON).
    verify=False skips the hashes of files latest_checkpoint(verify=True) has just checked.
    """
    path = Path(path)
    meta = verify_checkpoint(path, files=[])
    recorded = meta["checkpoint"]["files"]
    model_files = [f for f in recorded if f == MODEL_FILE or f.startswith(f"{SHARDS[0]}/")]
    has_opt = OPTIMIZER_FILE in recorded
    wanted = (model_files if load_model else []) + ([OPTIMIZER_FILE] if load_optimizer and has_opt else [])
    verify_checkpoint(path, files=wanted if verify else [])
    model_state = None
    if load_model:
        try:
            model_state = load_file(str(path / MODEL_FILE), device=str(device)) if MODEL_FILE in recorded \
                else _whole(path, model_files, device)
        except Exception as e:  # noqa: BLE001 -- whatever safetensors says, name the folder
            raise RlkitError(f"{path / model_files[0]} cannot be read ({str(e).splitlines()[0][:200]})") from None
    optimizer_state = read_optimizer(path, device, verify=False) if load_optimizer and has_opt else None
    meta.pop("checkpoint")
    return model_state, optimizer_state, meta


def _whole(path: Path, shards: list[str], device) -> dict:
    """Whole tensors from the shards of a sharded save: each safetensors file holds one piece per name, at the
    offsets its header records (JSON, as DCP's HuggingFaceStorageWriter writes them)."""
    pieces = {}
    for name in shards:
        with safe_open(path / name, "pt", device=str(device)) as f:
            offsets = json.loads(f.metadata()["DCP_SHARDING_INFO"])
            for k in f.keys():
                pieces.setdefault(k, []).append((offsets[k]["saved_offsets"], f.get_tensor(k)))
    out = {k: parts[0][1].new_empty([max(o[d] + t.shape[d] for o, t in parts) for d in range(parts[0][1].dim())])
           for k, parts in pieces.items()}
    for k, parts in pieces.items():
        for o, t in parts:
            out[k][tuple(slice(a, a + n) for a, n in zip(o, t.shape))] = t
    return out


def read_optimizer(path, device="cpu", verify: bool = True) -> dict | None:
    """A checkpoint's optimizer state alone (None when it saved none), for a resume whose meta is already read."""
    path = Path(path)
    if not (path / OPTIMIZER_FILE).is_file():
        if (path / SHARDS[1]).is_dir():
            raise RlkitError(f"{path} holds a sharded optimizer state; load it with ctx.parallel.load_optimizer")
        return None
    if verify:
        verify_checkpoint(path, files=[OPTIMIZER_FILE])
    try:
        return torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- includes the refusal of non-weight pickles
        why = str(e).strip().split(".")[0][:120] or type(e).__name__  # torch's first sentence, not its advice
        raise RlkitError(f"{path / OPTIMIZER_FILE} is refused: it holds something other than tensors and "
                         f"plain values, which rlkit never unpickles ({why}); use a checkpoint rlkit saved") from None


# ----------------------------------------------------------------------------- find

def _step_dirs(stage_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step_N folder, oldest first; tmp folders start with '.' and never match."""
    if not stage_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in stage_dir.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def latest_checkpoint(stage_dir, verify: bool = True, warn: Callable[[str], None] = _warn) -> Path | None:
    """The newest complete checkpoint in stage_dir, or None.

    verify=True checks every file's size and sha256 and skips damaged checkpoints, calling
    warn("checkpoint X is damaged (...); using Y") for each (pass print0 to print it; default: a warning).
    verify=False only requires meta.json (cheap: no hashing).
    """
    damaged = []
    for _, path in reversed(_step_dirs(Path(stage_dir))):
        try:
            if verify:
                verify_checkpoint(path)
            elif not (path / META_FILE).is_file():
                raise RlkitError(f"{path / META_FILE} is missing")
        except RlkitError as e:
            damaged.append((path, str(e)))
            continue
        for bad, why in damaged:
            warn(f"checkpoint {bad} is damaged ({why}); using {path}")
        return path
    for bad, why in damaged:
        warn(f"checkpoint {bad} is damaged ({why}); no complete checkpoint left")
    return None
