"""Where tool calls come from: the tokenizer's opt-in tool specials (appended: the others keep their ids, and a
tokenizer trained without them is unchanged), and training data with calls: gsm8k's annotations and the
arithmetic task's calculator option, rendered with the tool outputs, and only those, out of the loss."""
import json
import os

import pytest

from rlkit.core.plugins import load_plugins
from rlkit.lib.text.tokenizer import SPECIALS, TOOL_SPECIALS, Tokenizer, train_tokenizer

TEXTS = ["Natalia sold 48/2 = 24 clips in May. #### 72", "How many apples does Mia have now?"] * 50


@pytest.fixture(scope="module")
def tasks():
    os.environ.setdefault("RLKIT_LOAD_PLUGINS", "")
    return load_plugins().tables["task"]  # the built-ins, through their entry points


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300, tools=True)


def test_tool_specials_are_appended_and_opt_in(tok, tmp_path):
    plain = train_tokenizer(TEXTS, 300)
    assert plain.tool_tokens is None and list(plain.specials) == SPECIALS
    assert list(tok.specials) == SPECIALS + TOOL_SPECIALS and tok.vocab_size == plain.vocab_size == 300
    base = len(tok.ranks)
    assert [tok.specials[s] for s in SPECIALS] == list(range(base, base + len(SPECIALS)))  # the old order
    t = tok.tool_tokens
    assert (t.call_start, t.call_end, t.output_start, t.output_end) == (
        tok.token_id("python_start"), tok.token_id("python_end"), (tok.token_id("output_start"),),
        (tok.token_id("output_end"),)) and not t.json_calls
    tok.save(tmp_path)  # a tokenizer saved with them keeps them; one without (older checkpoints) still loads
    assert Tokenizer.load(tmp_path).tool_tokens == t
    plain.save(tmp_path / "old")
    assert Tokenizer.load(tmp_path / "old").tool_tokens is None


def test_sft_on_an_annotated_gsm8k_row_masks_exactly_the_tool_output(tasks, tok, tmp_path):
    row = {"question": "Half of 48?", "answer": "Half of 48 is <<48/2=24>>24.\n#### 24"}
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    ex = tasks["gsm8k"]("train", path=str(tmp_path), tools=True)[0]
    assert ex["answer"] == ex["messages"][1]["content"] == "Half of 48 is 24.\n#### 24"
    ids, mask = tok.render_conversation(ex["messages"])
    reply = ids.index(tok.token_id("assistant_start")) + 1
    out = ids.index(tok.token_id("output_start"))
    # by hand: <|output_start|> "2" "4" <|output_end|> (digits are single tokens) are the only masked reply tokens
    assert ids[out:out + 4] == [tok.token_id("output_start"), *tok.encode("24"), tok.token_id("output_end")]
    assert [i for i in range(reply, len(ids)) if mask[i] == 0] == [out, out + 1, out + 2, out + 3]
    call = ids.index(tok.token_id("python_start"))
    assert tok.decode(ids[call + 1:ids.index(tok.token_id("python_end"))]) == "48/2" and mask[call] == 1
    assert tok.decode([i for i, m in zip(ids[reply:], mask[reply:]) if m]) == \
        "Half of 48 is <|python_start|>48/2<|python_end|>24.\n#### 24<|assistant_end|>"
    plain = tasks["gsm8k"]("train", path=str(tmp_path))[0]
    assert "parts" not in plain["messages"][1] and plain["answer"] == ex["answer"]


def test_gsm8k_outputs_are_the_calculators_text_not_the_annotations(tasks, tmp_path):
    row = {"question": "q", "answer": "Each costs 2*1.50 = $<<2*1.50=3.00>>3.00 in all.\n#### 3"}
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    parts = tasks["gsm8k"]("train", path=str(tmp_path), tools=True)[0]["messages"][1]["parts"]
    assert [p for p in parts if p["type"] != "text"] == [{"type": "python", "text": "2*1.50"},
                                                        {"type": "python_output", "text": "3"}]


def test_arithmetic_with_calculator_calls_has_one_call_a_step_and_the_same_text(tasks):
    plain = tasks["arithmetic"]("train", operands=[2, 4], ops="+-*", size=50)
    calls = tasks["arithmetic"]("train", operands=[2, 4], ops="+-*", size=50, calculator=True)
    for a, b in zip(plain, calls):
        assert a["messages"][1]["content"] == b["messages"][1]["content"] and a["answer"] == b["answer"]
        parts = b["messages"][1]["parts"]
        assert sum(p["type"] == "python" for p in parts) == len(b["ops"])
        for call, out in zip(parts, parts[1:]):
            if call["type"] == "python":
                assert out["type"] == "python_output" and int(out["text"]) == eval(call["text"])  # noqa: S307


def test_a_tokenizer_without_tool_tokens_refuses_parts_in_one_line(tasks):
    ex = tasks["arithmetic"]("train", size=1, calculator=True)[0]
    with pytest.raises(Exception, match="no special token"):
        train_tokenizer(TEXTS, 300).render_conversation(ex["messages"])


def test_midtrain_packs_tool_outputs_out_of_the_loss_and_leaves_other_text_as_before(tasks, tok):
    from rlkit.plugins.stages.midtrain_run import _with_outputs, pack

    calls = tasks["arithmetic"]("train", size=4, calculator=True)
    plain = tasks["arithmetic"]("train", size=4)
    docs = [tok.render_conversation(ex["messages"])[0] for ex in calls]
    marked = [_with_outputs(ids, tok.tool_tokens) for ids in docs]
    n = sum(len(d) for d in docs) - 1
    inputs, targets, _ = next(pack(iter(marked), 1, n, 0, 1))
    stream = [t for d in docs for t in d]
    assert inputs[0].tolist() == stream[:-1]  # the model reads every token
    start, end = tok.token_id("output_start"), tok.token_id("output_end")
    inside, expected = False, []
    for t in stream[1:]:  # by hand: -1 from <|output_start|> through <|output_end|>, else the next token
        inside = inside or t == start
        expected.append(-1 if inside else t)
        inside = inside and t != end
    assert targets[0].tolist() == expected and expected.count(-1) > 0
    before = [tok.render_conversation(ex["messages"])[0] for ex in plain]
    assert [_with_outputs(ids, tok.tool_tokens) for ids in before] == before
