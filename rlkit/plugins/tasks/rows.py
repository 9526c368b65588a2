"""Where an eval task's rows come from: the Hugging Face hub through `datasets`, or a local JSONL.

    rows("arc_easy", split, source="allenai/ai2_arc", config="ARC-Easy")     # the hub
    rows("arc_easy", split, path="data/arc_easy")        # a folder holding <split>.jsonl
    rows("arc_easy", split, path="data/arc_easy.jsonl")  # one file, whatever the split
Each yields (where, row): where names the row ("file:line" or "source[split] row i") in errors.
"""
from __future__ import annotations

from pathlib import Path

from rlkit.core.errors import RlkitError
from rlkit.lib.text.textdata import jsonl_rows


def rows(task: str, split: str, source: str, config: str | None = None, path: str | None = None):
    if path is not None:
        yield from _local(task, Path(path), split)
        return
    import datasets

    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as e:  # offline, no such dataset or split: all end the same way for the user
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RlkitError(f"{task}: could not load {source!r} ({config}, split {split!r}) from the Hugging Face hub "
                         f"({message}); offline? pass `path:` with a folder holding {split}.jsonl, or a .jsonl file") \
            from None
    for i, row in enumerate(ds):
        yield f"{source}[{split}] row {i}", row


def _local(task: str, path: Path, split: str):
    if path.is_file():
        yield from jsonl_rows(path)
        return
    if not path.is_dir():
        raise RlkitError(f"{task}: path {str(path)!r} is neither a .jsonl file nor a folder")
    file = path / f"{split}.jsonl"
    if not file.is_file():
        raise RlkitError(f"{task}: {file} not found; the folder must hold {split}.jsonl")
    yield from jsonl_rows(file)


def take(examples, limit: int | None, task: str):
    """The first `limit` examples (all if None)."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise RlkitError(f"{task}: limit must be a non-negative int, got {limit!r}")
    return examples if limit is None else examples[:limit]
