"""`rlkit export`: a checkpoint written as a Hugging Face folder, all or nothing.

The model plugin writes into a hidden sibling `.<folder>.tmp-export-<pid>/`, which is renamed to the folder
only once every file is there (as checkpoints are committed, rlkit/core/checkpoint.py). So an export killed
at any moment (even by SIGKILL) leaves no folder that looks like a model, only the hidden one, which the next
export to that folder removes. A target that is a file, or a folder that is not empty, is refused before
the checkpoint is loaded.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from rlkit.core.errors import RlkitError
from rlkit.core.files import pid_alive, writing


def check_target(folder: Path) -> None:
    """The folder to write must be new or empty, and its parent a folder."""
    if folder.is_file() or (folder.exists() and not folder.is_dir()):
        raise RlkitError(f"export: {folder} is a file; give the path of a new folder to write the model into")
    if folder.is_dir() and any(folder.iterdir()):
        raise RlkitError(f"export: {folder} is not empty; give a new folder")
    parent = folder.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise RlkitError(f"export: {parent} is a file, so {folder} cannot be made; give a folder path")


def export(source: Path, folder: Path, plugin_files: list[Path]) -> tuple[Path, list[str]]:
    """Load the checkpoint at `source` and write it to `folder`; returns (the checkpoint, the plugin's notes)."""
    from rlkit.core import policy
    from rlkit.core.handoff import Checkpoint
    from rlkit.core.plugins import load_plugins

    check_target(folder)
    handle = Checkpoint.open(source, "export")
    model, tokenizer = policy.load(load_plugins(plugin_files), handle, where="export")
    if not callable(getattr(model, "export", None)):
        raise RlkitError(f"export: model plugin '{handle.model['name']}' cannot write Hugging Face format (its "
                         "Policy has no export()); for the built-in gpt see docs/plugins.md")
    folder = folder.resolve()
    with writing(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(folder)
        tmp = folder.parent / f".{folder.name}.tmp-export-{os.getpid()}"
        tmp.mkdir()
    try:
        with writing(folder):
            notes = model.export(tmp, tokenizer)
            if folder.is_dir():
                folder.rmdir()  # empty (checked above); a folder made meanwhile with files in it stops here
            os.rename(tmp, folder)  # the commit: the folder exists only once complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return handle.path, list(notes or [])


def _remove_leftovers(folder: Path) -> None:
    """Delete hidden folders of exports to `folder` that were killed (their process is gone)."""
    for p in folder.parent.glob(f".{folder.name}.tmp-export-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)

