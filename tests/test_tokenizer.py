"""The tokenizer: BPE training, exact round trips, atomic specials, chat masks, save/load, bytes per token."""
import json
from pathlib import Path

import pytest

from rlkit.core.errors import RlkitError
from rlkit.lib.text.tokenizer import MIN_VOCAB_SIZE, SPECIALS, Tokenizer, train_tokenizer

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="module")
def texts():
    with open(GSM8K / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(300), f)]
    return [row["question"] + "\n" + row["answer"] for row in rows]


@pytest.fixture(scope="module")
def tok(texts):
    return train_tokenizer(texts, 512)


def test_trains_to_the_asked_size_with_specials_last(tok):
    assert tok.vocab_size == 512
    assert [tok.token_id(s) for s in SPECIALS] == list(range(512 - len(SPECIALS), 512))
    assert tok.bos_id == tok.token_id("<|bos|>") == tok.token_id("bos")


def test_training_is_deterministic(texts, tok):
    assert train_tokenizer(texts, 512).ranks == tok.ranks


def test_round_trips_gsm8k_and_unicode_exactly(texts, tok):
    for text in texts + ["café — naïve 😀 ∑ 中文\n\n\ttabs  and   spaces "]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(texts[:20]) == [tok.encode(t) for t in texts[:20]]


def test_compresses_and_splits_numbers_into_single_digits(texts, tok):
    assert sum(len(tok.encode(t)) for t in texts) < 0.6 * sum(len(t.encode()) for t in texts)  # measured 0.53
    assert [tok.decode([i]) for i in tok.encode("12345")] == ["1", "2", "3", "4", "5"]


def test_special_strings_in_user_text_stay_plain_text(tok):
    text = "ignore <|bos|> and <|assistant_end|>"
    ids = tok.encode(text)
    assert max(ids) < tok.vocab_size - len(SPECIALS)
    assert tok.decode(ids) == text
    rendered, _ = tok.render_conversation([{"role": "user", "content": text}])
    assert rendered.count(tok.bos_id) == 1 and tok.token_id("assistant_end") not in rendered


def test_render_conversation_ids_and_mask(tok):
    q, a = "What is 12 + 7?", "12 + 7 = 19\n#### 19"
    ids, mask = tok.render_conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    us, ue, ast, ae = (tok.token_id(n) for n in ("user_start", "user_end", "assistant_start", "assistant_end"))
    qi, ai = tok.encode(q), tok.encode(a)
    assert ids == [tok.bos_id, us, *qi, ue, ast, *ai, ae]
    assert mask == [0] * (len(qi) + 4) + [1] * (len(ai) + 1)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == a + "<|assistant_end|>"


def test_mask_covers_every_assistant_turn_and_truncates(tok):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    ids, mask = tok.render_conversation(msgs)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "b<|assistant_end|>d<|assistant_end|>"
    short_ids, short_mask = tok.render_conversation(msgs, max_len=5)
    assert (short_ids, short_mask) == (ids[:5], mask[:5])


def test_system_message_folds_into_first_user_turn(tok):
    ids, _ = tok.render_conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert ids == tok.render_conversation([{"role": "user", "content": "Be brief.\n\nhi"}])[0]
    with pytest.raises(RlkitError, match="chat message 0"):
        tok.render_conversation([{"role": "robot", "content": "x"}])


def test_render_for_completion_is_the_prompt_prefix(tok):
    msgs = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "#### 4"}]
    prompt = tok.render_for_completion(msgs)
    full, _ = tok.render_conversation(msgs)
    assert prompt[-1] == tok.token_id("assistant_start")
    assert full[: len(prompt)] == prompt
    assert tok.render_for_completion(msgs[:1]) == prompt


def test_save_load_is_plain_text_and_identical(tok, texts, tmp_path):
    tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer.tiktoken"]
    json.loads((tmp_path / "tokenizer.json").read_text())
    (tmp_path / "tokenizer.tiktoken").read_text(encoding="ascii")
    loaded = Tokenizer.load(tmp_path)
    assert loaded.vocab_size == tok.vocab_size and loaded.specials == tok.specials
    for text in texts[:50]:
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.render_conversation([{"role": "user", "content": "x"}]) == \
        tok.render_conversation([{"role": "user", "content": "x"}])
    with pytest.raises(RlkitError, match="not found"):
        Tokenizer.load(tmp_path / "nowhere")


def test_token_bytes_sum_to_utf8_length(tok, texts):
    tb = tok.token_bytes()
    assert tb.shape == (tok.vocab_size,) and tb[:256].eq(1).all()
    assert tb[-len(SPECIALS):].eq(0).all()
    for text in texts[:20] + ["café 😀"]:
        ids, _ = tok.render_conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": text}])
        # specials count 0, so the sum is the UTF-8 length of the plain text alone
        assert tb[ids].sum().item() == len("q".encode()) + len(text.encode())


def test_vocab_size_too_small_names_the_key_and_minimum(texts):
    with pytest.raises(RlkitError, match=rf"stages\.tokenizer\.vocab_size.*{MIN_VOCAB_SIZE}"):
        train_tokenizer(texts, 261)
    assert MIN_VOCAB_SIZE == 262


def test_small_text_gives_a_smaller_vocab_that_still_works():
    tok = train_tokenizer(["ab ab ab"] * 3, 400)
    assert MIN_VOCAB_SIZE <= tok.vocab_size < 400
    assert tok.decode(tok.encode("abba zz")) == "abba zz"
    with pytest.raises(RlkitError, match="empty"):
        train_tokenizer([], 400)


def test_core_reads_a_tokenizer_folder_through_the_plugin_its_kind_names(tok, texts, tmp_path, write_file):
    """Core knows no tokenizer format: the folder's tokenizer.json names the tokenizer plugin that reads it;
    a folder from before kinds were recorded goes to the one plugin installed; two plugins and no kind, or a
    kind no plugin provides, are one line each."""
    from rlkit.core.plugins import load_plugins
    from rlkit.core.policy import load_tokenizer

    tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["kind"] == "bpe"
    plugins = load_plugins()
    assert load_tokenizer(plugins, tmp_path / "tok", "here").encode(texts[0]) == tok.encode(texts[0])
    del meta["kind"]  # an older folder
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(meta))
    assert load_tokenizer(plugins, tmp_path / "tok", "here").encode(texts[0]) == tok.encode(texts[0])
    other = write_file("chars.py", """
        import rlkit

        @rlkit.hookimpl
        def rlkit_tokenizers():
            return {"chars": lambda folder: "a chars tokenizer"}
        """)
    two = load_plugins([other])
    with pytest.raises(RlkitError, match="names no tokenizer kind and 2 tokenizer plugins are installed"):
        load_tokenizer(two, tmp_path / "tok", "here")
    meta["kind"] = "chars"
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(meta))
    assert load_tokenizer(two, tmp_path / "tok", "here") == "a chars tokenizer"
    with pytest.raises(RlkitError, match="no tokenizer plugin named 'chars'"):
        load_tokenizer(plugins, tmp_path / "tok", "here")
