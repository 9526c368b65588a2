"""gsm8k: grade-school math word problems (Cobbe et al. 2021), from the Hugging Face hub or local JSONL.

Each row {"question", "answer"} becomes one example. GSM8K's answers carry calculator annotations,
"48/2 = <<48/2=24>>24"; they are stripped ("48/2 = 24"), so the model is trained on and rewarded
against plain worked steps ending in "#### 72". With `tools: true` the reply also carries them as calls
(rlkit.lib.text.task.calls_from_annotations): "48/2 = " <|python_start|>48/2<|python_end|>
<|output_start|>24<|output_end|> "24", the output written by the built-in calculator (what the engine will
force at sampling time) and left out of the loss; the reward's "answer" stays the plain text.

    gsm8k(split)                          # datasets.load_dataset("openai/gsm8k", "main", split=split)
    gsm8k(split, path="data/gsm8k")       # offline: a folder with train.jsonl and test.jsonl
"""
from __future__ import annotations

import re
from pathlib import Path

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task, calls_from_annotations, make_example
from rlkit.lib.text.textdata import jsonl_rows

ANNOTATION = re.compile(r"<<[^<>]*>>")


@rlkit.hookimpl
def rlkit_tasks():
    return {"gsm8k": gsm8k}


def gsm8k(split: str, source: str = "openai/gsm8k", path: str | None = None, limit: int | None = None,
          tools: bool = False) -> Task:
    """GSM8K's `split` ("train" | "test"), the first `limit` rows if given; tools: replies with calculator calls."""
    if split not in ("train", "test"):
        raise RlkitError(f"gsm8k: split must be 'train' or 'test', got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise RlkitError(f"gsm8k: limit must be a non-negative int, got {limit!r}")
    rows = _local_rows(Path(path), split) if path is not None else _hub_rows(source, split)
    examples = []
    for where, row in rows:
        if limit is not None and len(examples) >= limit:
            break
        examples.append(to_example(row, where, tools))
    return Task(examples, f"gsm8k-{split}", reward="gsm8k", title="GSM8K")


def to_example(row: dict, where: str, tools: bool = False) -> dict:
    """One GSM8K row as an example; `where` ("file:line") names the row in errors."""
    for field in ("question", "answer"):
        if not isinstance(row.get(field), str):
            raise RlkitError(f"{where}: missing field {field!r} (a GSM8K row needs string 'question' and 'answer')")
    solution = ANNOTATION.sub("", row["answer"])
    if "####" not in solution:
        raise RlkitError(f"{where}: the answer has no final '#### <number>' line")
    if not tools:
        return make_example(row["question"], solution)
    from rlkit.plugins.tools.calculator import calculator

    return make_example(row["question"], solution, calls_from_annotations(row["answer"], calculator)[1])


def _local_rows(folder: Path, split: str):
    """(file:line, row) for each line of folder/<split>.jsonl."""
    if not folder.is_dir():
        raise RlkitError(f"gsm8k: path {str(folder)!r} is not a folder; expected one with train.jsonl and test.jsonl")
    file = folder / f"{split}.jsonl"
    if not file.is_file():
        raise RlkitError(f"gsm8k: {file} not found; the folder must hold train.jsonl and test.jsonl")
    yield from jsonl_rows(file)


def _hub_rows(source: str, split: str):
    """(source[split]:row, row) for each row of the hub dataset."""
    import datasets

    try:
        ds = datasets.load_dataset(source, "main", split=split)
    except Exception as e:  # offline, no such dataset, no such config: all end the same way for the user
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RlkitError(
            f"gsm8k: could not load {source!r} from the Hugging Face hub ({message}); "
            f"offline? pass `path:` with a folder holding train.jsonl and test.jsonl"
        ) from None
    for i, row in enumerate(ds):
        yield f"{source}[{split}] row {i}", row
