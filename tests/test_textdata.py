"""Text sources (task, .txt, .jsonl, .parquet, folder, hub) and packing into shifted, rank-sliced batches."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import example_text
from rlkit.lib.text.textdata import check_source, iter_texts, packed_batches
from rlkit.plugins.tasks.arithmetic import arithmetic

TASKS = {"arithmetic": arithmetic}


def texts(source, **kw):
    return list(iter_texts(source, tasks=TASKS, **kw))


def test_task_source_gives_example_texts():
    assert texts("arithmetic", args={"size": 5}) == [example_text(e) for e in arithmetic("train", size=5)]
    assert texts("arithmetic", args={"size": 3}, split="test") == [example_text(e) for e in arithmetic("test", size=3)]


def test_txt_is_one_document_per_paragraph(tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsame doc\n\n\n\nsecond doc\n\nthird\n")
    assert texts("a.txt", base_dir=tmp_path) == ["first line\nsame doc", "second doc", "third"]


def test_a_home_relative_path_is_expanded_and_a_missing_local_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("one\n\ntwo\n")
    assert texts("~/corpus.txt", base_dir="/somewhere/else") == ["one", "two"]
    check_source("~/corpus.txt", TASKS, "/somewhere/else", "data.source")  # exists: no error
    check_source("org/dataset", TASKS, tmp_path, "data.source")  # may be a hub id: only loading can tell
    with pytest.raises(RlkitError, match=r"^data.source: no such file or folder .*nope\.jsonl \(a source is a task: "
                                         r"arithmetic, an existing path, or a hub dataset id\)$"):
        check_source("data/nope.jsonl", TASKS, tmp_path, "data.source")


def test_jsonl_reads_the_text_field(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n{"body": "y"}\n')
    assert texts("a.jsonl", base_dir=tmp_path) == ["one", "two"]
    assert texts("b.jsonl", base_dir=tmp_path, text_field="body") == ["x", "y"]
    with pytest.raises(RlkitError, match=r"b\.jsonl:1: no string field 'text' \(has \['body'\]\).*data\.text_field"):
        texts("b.jsonl", base_dir=tmp_path)
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(RlkitError, match=r"c\.jsonl:2: bad JSON"):
        texts("c.jsonl", base_dir=tmp_path)


def test_parquet_and_folders(tmp_path):
    data = tmp_path / "corpus"
    (data / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"content": ["p1", "p2"], "n": [1, 2]}), data / "b.parquet")
    (data / "a.jsonl").write_text('{"content": "j1"}\n')
    (data / "sub" / "c.txt").write_text("t1\n\nt2\n")
    (data / "notes.md").write_text("ignored")
    assert texts("corpus", base_dir=tmp_path, text_field="content") == ["j1", "p1", "p2", "t1", "t2"]
    with pytest.raises(RlkitError, match=r"b\.parquet: no column 'text' \(has \['content', 'n'\]\)"):
        texts("corpus/b.parquet", base_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlkitError, match="holds no"):
        texts("empty", base_dir=tmp_path)
    with pytest.raises(RlkitError, match="only apply to tasks and hub"):
        texts("corpus", base_dir=tmp_path, args={"name": "x"})


def test_unknown_source_says_what_was_tried(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nope/corpus' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RlkitError, match=r"^stages\.pretrain\.data\.source: 'nope/corpus' is neither a task "
                                         r"\(arithmetic\) nor an existing path .*hub failed: Couldn't reach"):
        texts("nope/corpus", base_dir=tmp_path, where="stages.pretrain.data.source")


def test_hub_source_streams_the_text_field(monkeypatch):
    import datasets

    calls = []

    def fake(source, **kwargs):
        calls.append((source, kwargs))
        return iter([{"text": "a", "id": 1}, {"text": "b", "id": 2}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert texts("org/corpus", args={"name": "sample-10BT"}) == ["a", "b"]
    assert calls == [("org/corpus", {"streaming": True, "split": "train", "name": "sample-10BT"})]
    with pytest.raises(RlkitError, match=r"org/corpus\[train\] row 0: no string field 'body'"):
        texts("org/corpus", text_field="body")


class ByteTokenizer:
    """Bytes as tokens, 256 as <|bos|>: the expected stream is easy to write down."""

    bos_id = 256

    def encode_batch(self, texts):
        return [list(t.encode()) for t in texts]


DOCS = [f"document number {i}" + "!" * (i % 7) for i in range(40)]
STREAM = [t for d in DOCS for t in [256, *d.encode()]]


def take(n, **kw):
    batches = packed_batches(lambda: DOCS, ByteTokenizer(), **kw)
    return [next(batches) for _ in range(n)]


def test_packing_gives_contiguous_shifted_rows():
    B, T = 3, 8
    stream = STREAM * 3  # looping repeats the documents
    for step, (x, y, _) in enumerate(take(40, batch_size=B, seq_len=T)):
        assert x.shape == y.shape == (B, T) and x.dtype == torch.long
        start = step * B * T
        assert x.flatten().tolist() == stream[start: start + B * T]
        assert y.flatten().tolist() == stream[start + 1: start + B * T + 1]
    assert 40 * B * T > len(STREAM)  # the test crossed an epoch boundary


def test_ranks_split_each_step_without_overlap_or_gap():
    whole = take(6, batch_size=4, seq_len=8)
    ranks = [take(6, batch_size=2, seq_len=8, rank=r, world_size=2) for r in range(2)]
    for step in range(6):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), whole[step][0])
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), whole[step][1])
        assert ranks[0][step][2] == ranks[1][step][2] == whole[step][2]  # one position for all ranks


def test_resuming_from_a_position_continues_exactly():
    run = take(40, batch_size=2, seq_len=16)
    second_epoch = next(k for k, (_, _, pos) in enumerate(run) if pos["epoch"] == 1)
    for k in (0, 4, second_epoch - 1, second_epoch + 2):
        resumed = take(40 - k - 1, batch_size=2, seq_len=16, position=run[k][2])
        for (x, y, pos), (rx, ry, rpos) in zip(run[k + 1:], resumed, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry) and pos == rpos


def test_without_loop_the_stream_ends_and_empty_text_is_an_error():
    batches = list(packed_batches(lambda: DOCS, ByteTokenizer(), 2, 16, loop=False))
    assert len(batches) == (len(STREAM) - 1) // 32
    with pytest.raises(RlkitError, match="no documents"):
        next(packed_batches(lambda: [], ByteTokenizer(), 2, 16))
