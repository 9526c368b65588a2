"""Plain text for the tokenizer and pretraining stages, and its packing into (inputs, targets) batches.

`iter_texts(source, ...)` yields documents. One key, `source`, names three kinds, tried in order:
  1. a registered task (e.g. a task plugin named in the YAML): each example's question + "\\n" + solution, from tasks[source](split, **args);
  2. a local path, relative to base_dir (the experiment file's folder):
       .txt      one document per paragraph (paragraphs are separated by blank lines),
       .jsonl    one document per line, from the field `text_field`,
       .parquet  one document per row, from the column `text_field`,
       a folder  every such file under it, in sorted path order;
  3. a Hugging Face hub dataset id: datasets.load_dataset(source, streaming=True, split=split, **args)[text_field].

`packed_batches(...)` turns documents into next-token batches: every document is encoded with a
<|bos|> in front, the documents are concatenated into one stream, and the stream is cut into rows
of seq_len + 1 tokens that overlap by one (a row's last target is the next row's first input), so
no token is dropped and no padding is needed. One step takes batch_size * world_size rows; rank r
gets rows [r * batch_size, (r + 1) * batch_size) of them: together the ranks cover the stream
without overlap or gap. Every rank reads and encodes the whole stream (simple, and the position
is the same on every rank; cheap next to the model at rlkit's scales).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import example_text

SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass
class TextData:
    """The `data:` block of a stage that reads plain text."""
    source: str = MISSING  # a task name, a local path (relative to the YAML), or a hub dataset id
    args: dict[str, Any] = field(default_factory=dict)  # task args, or load_dataset kwargs
    text_field: str = "text"  # the column holding text in JSONL/parquet/hub data
    split: str = "train"


def check_data(data: TextData, setup, key: str = "data") -> None:
    """Before any work: a task source takes its args, a local file exists (see check_source)."""
    from rlkit.core.plugins import bind_args

    tasks = setup.plugins.tables["task"]
    if data.source in tasks:
        bind_args("task", data.source, tasks[data.source], data.args, f"{setup.where}.{key}.args")
    check_source(data.source, tasks, setup.base_dir, f"{setup.where}.{key}.source")


def iter_texts(source: str, *, tasks: Mapping[str, Callable], args: Mapping | None = None, text_field: str = "text",
               split: str = "train", base_dir: Path | str = ".", where: str = "data.source") -> Iterator[str]:
    """Documents from a task name, a local file/folder or a hub dataset id; `where` names the config key in errors."""
    args = dict(args or {})
    if source in tasks:
        for example in tasks[source](split, **args):
            yield example_text(example)
        return
    path = Path(base_dir) / Path(source).expanduser()  # an absolute or ~ path stays as it is
    if path.exists():
        if args:
            raise RlkitError(f"{where}: args {sorted(args)} only apply to tasks and hub datasets, "
                             f"not to the path {path}")
        yield from _path_texts(path, text_field, where)
        return
    yield from _hub_texts(source, text_field, split, args, where, path, tasks, Path(base_dir))


def check_source(source: str, tasks: Mapping[str, Callable], base_dir: Path | str, where: str) -> None:
    """Before any work: a source written as a local file (a known suffix, or starting with '.', '/' or '~')
    must exist. Anything else that is not a task may be a hub id, which only loading can tell."""
    path = Path(base_dir) / Path(source).expanduser()
    looks_local = source.endswith(SUFFIXES) or source.startswith((".", "/", "~"))
    if source not in tasks and looks_local and not path.exists():
        raise RlkitError(f"{where}: no such file or folder {path} (a source is a task: "
                         f"{', '.join(sorted(tasks)) or 'none registered'}, an existing path, or a hub dataset id)")
    if source not in tasks and path.is_dir() and not any(p.suffix in SUFFIXES for p in path.rglob("*")):
        raise RlkitError(f"{where}: the folder {path} holds no {', '.join(SUFFIXES)} files")


def _path_texts(path: Path, text_field: str, where: str) -> Iterator[str]:
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise RlkitError(f"{where}: the folder {path} holds no {', '.join(SUFFIXES)} files")
    for file in files:
        if file.suffix == ".txt":
            yield from _txt(file)
        elif file.suffix == ".jsonl":
            yield from _jsonl(file, text_field, where)
        elif file.suffix == ".parquet":
            yield from _parquet(file, text_field, where)
        else:
            raise RlkitError(f"{where}: {file} is not a {', '.join(SUFFIXES)} file or a folder of them")


def utf8_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line; a line that is not UTF-8 is one error naming the file and line."""
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RlkitError(f"{file}:{number}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                 "save the file as UTF-8") from None


def _txt(file: Path) -> Iterator[str]:
    paragraph = []
    for _, line in utf8_lines(file):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).rstrip("\n")
            paragraph = []
    if paragraph:
        yield "".join(paragraph).rstrip("\n")


def jsonl_rows(file: Path) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for each non-blank line of a .jsonl file; bad JSON or a non-object is one line."""
    for number, line in utf8_lines(file):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RlkitError(f"{file}:{number}: bad JSON ({e.msg}, column {e.colno}); "
                             "a .jsonl file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise RlkitError(f"{file}:{number}: expected a JSON object, got {type(row).__name__}")
        yield f"{file}:{number}", row


def _jsonl(file: Path, text_field: str, where: str) -> Iterator[str]:
    try:
        for at, row in jsonl_rows(file):
            if not isinstance(row.get(text_field), str):
                raise RlkitError(f"{at}: no string field {text_field!r} (has {sorted(row)}); "
                                 f"set {where.rsplit('.', 1)[0]}.text_field")
            yield row[text_field]
    except RlkitError as e:
        raise RlkitError(f"{where}: {e}") from None


def _parquet(file: Path, text_field: str, where: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # noqa: BLE001 -- pyarrow's errors for a damaged file vary: name the file
        raise RlkitError(f"{where}: {file} is not a readable parquet file ({str(e).splitlines()[0][:120]})") from None
    if text_field not in pf.schema_arrow.names:
        raise RlkitError(f"{file}: no column {text_field!r} (has {pf.schema_arrow.names}); "
                         f"set {where.rsplit('.', 1)[0]}.text_field")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        yield from batch.column(0).to_pylist()


def _hub_texts(source, text_field, split, args, where, path, tasks, base_dir: Path) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(source, streaming=True, split=split, **args)
    except Exception as e:  # offline, no such dataset, bad args: the user needs the same three facts
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RlkitError(
            f"{where}: {source!r} is neither a task ({', '.join(sorted(tasks)) or 'none registered'}) nor an existing "
            f"path ({path}), and loading it from the Hugging Face hub failed: {message}; {offline_hint(base_dir)}"
        ) from None
    for i, row in enumerate(ds):
        if not isinstance(row.get(text_field), str):
            raise RlkitError(f"{source}[{split}] row {i}: no string field {text_field!r} (has {sorted(row)}); "
                             f"set {where.rsplit('.', 1)[0]}.text_field")
        yield row[text_field]


def offline_hint(base_dir: Path) -> str:
    """How to run without the hub: the offline profiles (*_offline.yaml) next to the experiment, else local data."""
    profiles = sorted(base_dir.glob("*_offline.yaml"))
    local = "offline? give a task with `args: {path: ...}` or a local file or folder as the source"
    if not profiles:
        return local
    runs = " or ".join(f"rlkit run {_shown(p)}" for p in profiles)
    return (f"offline? {runs} (an offline profile in the experiment's folder; its header says how), "
            f"or {local.removeprefix('offline? ')}")


def _shown(path: Path) -> str:
    """`path` relative to where rlkit runs when it lies below it (what a user types), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def packed_batches(texts: Callable[[], Iterable[str]], tokenizer, batch_size: int, seq_len: int, *, rank: int = 0,
                   world_size: int = 1, position: Mapping | None = None, loop: bool = True, encode_chunk: int = 256):
    """Yield (inputs (B, T), targets (B, T), position) for this rank, forever if `loop`, else until the text ends.

    texts: called once per epoch, must give the same documents in the same order every time.
    position: where to resume, as yielded with an earlier batch: {"epoch", "doc", "offset"} = the
        stream continues at token `offset` of document `doc` (counted from 0 within `epoch`).
    """
    import torch

    B, T = batch_size, seq_len
    need = B * T * world_size + 1  # tokens for one step of all ranks, plus the last target
    epoch, doc, offset = (position["epoch"], position["doc"], position["offset"]) if position else (0, 0, 0)
    buffer: list[int] = []
    last_doc, last_len = doc, 0  # the buffer's tail always lies within document `last_doc`
    while True:
        documents = islice(texts(), doc, None)  # skip without encoding what a resumed run has already used
        n_read = 0
        for chunk in _chunks(documents, encode_chunk):
            for ids in tokenizer.encode_batch(chunk):
                ids = [tokenizer.bos_id] + ids
                if n_read == 0 and offset:
                    ids = ids[offset:]
                buffer += ids
                last_doc, last_len = doc + n_read, len(ids) + (offset if n_read == 0 else 0)
                n_read += 1
                while len(buffer) >= need:
                    rows = torch.tensor(buffer[rank * B * T: (rank + 1) * B * T + 1], dtype=torch.long)
                    buffer = buffer[need - 1:]
                    here = {"epoch": epoch, "doc": last_doc, "offset": last_len - len(buffer)}
                    yield rows[:-1].view(B, T), rows[1:].view(B, T), here
        if not loop:
            return
        if n_read == 0 and doc == 0:
            raise RlkitError("packed_batches: the text source gave no documents")
        epoch, doc, offset = epoch + 1, 0, 0


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, n)):
        yield chunk
