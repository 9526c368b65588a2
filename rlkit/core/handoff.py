"""What one stage entry hands to the next: a Checkpoint handle, read from disk or returned by a stage.

A handle names a saved model (the step folder holding model.safetensors and meta.json), the
model plugin and spec that rebuild it, and the rlkit tokenizer folder it was trained with (None
when the model plugin brings its own tokenizer). A tokenizer stage hands on a tokenizer alone.
Paths on disk are stored relative to the file that records them, so a copied or moved run loads.

When an entry finishes, the pipeline writes `runs/<name>/<entry>/output.json`, the handle it
returned; `--resume` skips an entry that has one and hands its handle on. `Checkpoint.open(path)`
takes what `init:` may name: a step folder, an entry folder (its output, else its newest whole
checkpoint) or a run folder (its last finished entry, in the order of its config.yaml).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rlkit.core import checkpoint as ckpt
from rlkit.core.errors import RlkitError
from rlkit.core.files import atomic_write

OUTPUT_FILE = "output.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path | None  # step folder with the weights; None: no model yet (e.g. after a tokenizer stage)
    model: dict | None = None  # {"name": model plugin, "args": its spec()}
    tokenizer: Path | None = None  # rlkit tokenizer folder; None: the model plugin brings its own
    meta: dict = field(default_factory=dict)  # the step's meta.json (step, stage, ...)
    verified: bool = False  # its files' hashes were just checked (loading need not hash them again)

    @classmethod
    def open(cls, path, where: str = "init") -> "Checkpoint":
        """The handle for a step, entry or run folder (see the module docstring)."""
        path = Path(path).expanduser()
        if (path / ckpt.META_FILE).is_file():
            return cls.from_step(path, where)
        if (path / OUTPUT_FILE).is_file():
            return read_output(path, where)
        found = ckpt.latest_checkpoint(path, verify=False)
        if found is not None:
            return cls.from_step(found, where)
        for entry in reversed(_entries(path)):  # a run folder: its last finished entry
            if (path / entry / OUTPUT_FILE).is_file():
                return read_output(path / entry, where)
        raise RlkitError(f"{where}: no checkpoint at {path} (give a step folder, a stage folder of a run, "
                         f"or a run folder with a finished stage)")

    @classmethod
    def from_step(cls, step_dir: Path, where: str = "init", verified: bool = False) -> "Checkpoint":
        try:
            meta = json.loads((step_dir / ckpt.META_FILE).read_text())
            model, tok = meta["model"], meta.get("tokenizer")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RlkitError(f"{where}: {step_dir / ckpt.META_FILE} is not an rlkit checkpoint's meta "
                             f"({type(e).__name__}: {e})") from None
        return cls(step_dir, model, None if tok is None else _norm(step_dir / tok), meta, verified)

    def record(self, base: Path) -> dict:
        """JSON for meta.json or output.json in folder `base`: paths relative to it."""
        return {"checkpoint": _rel(self.path, base), "model": self.model, "tokenizer": _rel(self.tokenizer, base)}


def write_output(entry_dir: Path, handle: Checkpoint) -> None:
    """Record an entry's hand-off, atomically (rank 0 only)."""
    atomic_write(entry_dir / OUTPUT_FILE, json.dumps(handle.record(entry_dir), indent=2))


def read_output(entry_dir: Path, where: str = "resume") -> Checkpoint:
    file = entry_dir / OUTPUT_FILE
    try:
        record = json.loads(file.read_text())
        step = None if record["checkpoint"] is None else _norm(entry_dir / record["checkpoint"])
        tok = None if record["tokenizer"] is None else _norm(entry_dir / record["tokenizer"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RlkitError(f"{where}: {file} is damaged ({type(e).__name__}: {e}); delete it to rerun that stage") from None
    if step is not None:
        return Checkpoint.from_step(step, where)
    return Checkpoint(None, record.get("model"), tok)


def finished(entry_dir: Path) -> Checkpoint | None:
    """Under --resume: the handle an entry handed on, if it did and that checkpoint is still whole (its files'
    hashes are checked once, here); else None, and the entry runs again from its own newest whole checkpoint."""
    try:
        handle = read_output(entry_dir)
        if handle.path is not None:
            ckpt.verify_checkpoint(handle.path)
    except RlkitError:
        return None
    return handle if handle.path is None else dataclasses.replace(handle, verified=True)


def _entries(run_dir: Path) -> list[str]:
    """A run folder's stage entries in run order, from its config.yaml."""
    import yaml

    try:
        return [k for k, v in (yaml.safe_load((run_dir / "config.yaml").read_text()).get("stages") or {}).items()
                if v is not None]
    except (OSError, yaml.YAMLError, AttributeError):
        return []


def _rel(path: Path | None, base: Path) -> str | None:
    return None if path is None else os.path.relpath(Path(path).resolve(), Path(base).resolve())


def _norm(path: Path) -> Path:
    return Path(os.path.normpath(path))
