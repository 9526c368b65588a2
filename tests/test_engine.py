"""The serving engine (rlkit.lib.generation.engine): requests that join a running batch at different steps get, token
for token, what rlkit's sampler (generate) gives each of them alone; a decoder without join still serves."""
import contextlib
import threading
import time

import pytest
import torch

from rlkit.lib.generation.engine import Engine, Request
from rlkit.core.errors import RlkitError
from rlkit.cli.inference import TextStream, load
from rlkit.lib.generation.sampling import generate


@pytest.fixture(scope="module")
def model(tiny_run):
    model, tokenizer, _ = load(tiny_run)
    return model, tokenizer


def wait(requests, seconds=60):
    end = time.monotonic() + seconds
    while not all(r.done for r in requests):
        assert time.monotonic() < end, "the engine did not finish"
        time.sleep(0.005)


def prompts(tokenizer, n):
    return [tokenizer.render_for_completion([{"role": "user", "content": f"What is {i} + {i * 7 % 10}?"}])
            for i in range(n)]


@pytest.mark.parametrize("temperature, top_k, at_once", [(0.0, None, False), (1.0, None, False), (0.8, 20, False),
                                                       (1.0, 50, True)])
def test_requests_joining_mid_batch_equal_generate_alone(model, temperature, top_k, at_once):
    model, tokenizer = model
    stops = tokenizer.stop_ids
    engine = Engine(model, stops, max_rows=64)
    try:
        asks = [(p, 1 + i % 3, 10 + 7 * i, [100 * i + g for g in range(1 + i % 3)])
                for i, p in enumerate(prompts(tokenizer, 6))]
        reqs = []
        with engine._cond if at_once else contextlib.nullcontext():  # at once: all admitted in the same step
            for p, n, max_new, seeds in asks:  # else each arrives while the others decode
                reqs.append(engine.submit(Request(p, n, max_new, temperature, top_k, seeds)))
                time.sleep(0 if at_once else 0.004)
        wait(reqs)
    finally:
        engine.close()
    for (p, n, max_new, seeds), req in zip(asks, reqs):
        alone = generate(model, [p], n, max_new, temperature, top_k, stops, seeds=seeds)
        assert req.tokens == alone.completions
        assert req.finish == ["stop" if c[-1] in stops else "length" for c in alone.completions]


def test_a_bf16_engine_samples_from_the_bf16_copy_and_is_batch_independent(model):
    """bf16 rounds the join cache's attention differently from generate's shared-prefix one, so only float32
    is token for token generate(); in bf16 a request still gets the same tokens with or without company."""
    model, tokenizer = model
    ps = prompts(tokenizer, 4)
    engine = Engine(model, tokenizer.stop_ids, dtype=torch.bfloat16)
    try:
        def ask(i, p):
            return engine.submit(Request(p, 2, 16, 1.0, 50, [5 * i, 5 * i + 1]))
        alone = []
        for i, p in enumerate(ps):
            alone.append(ask(i, p))
            wait(alone)
        with engine._cond:
            together = [ask(i, p) for i, p in enumerate(ps)]
        wait(together)
    finally:
        engine.close()
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert next(engine.decoder.net.parameters()).dtype == torch.float32  # the embedding is shared, fp32
    assert engine.decoder.weight.dtype == torch.bfloat16  # the matmul weights: the bf16 inference copy


def test_a_full_batch_queues_requests_and_cancel_frees_rows(model):
    model, tokenizer = model
    engine = Engine(model, [], max_rows=2)  # no stop tokens: every row runs its max_new_tokens
    try:
        p = prompts(tokenizer, 1)[0]
        long = engine.submit(Request(p, 2, 600, 1.0, None, [1, 2]))
        queued = engine.submit(Request(p, 1, 5, 0.0, None, [3]))
        time.sleep(0.05)
        assert queued.tokens == [[]] and not long.done  # no room until the two rows leave
        long.cancel()
        wait([long, queued])
        assert long.finish == ["cancelled", "cancelled"] and len(long.tokens[0]) < 600
        assert queued.tokens == generate(model, [p], 1, 5, 0.0).completions
    finally:
        engine.close()


class NoJoin:
    """A decoder that has only the required prefill/step/keep (the engine then serves one request at a time)."""

    def __init__(self, inner):
        self.inner, self.max_len, self.logit_softcap = inner, inner.max_len, inner.logit_softcap

    def prefill(self, *args):
        return self.inner.prefill(*args)

    def step(self, tokens):
        return self.inner.step(tokens)

    def keep(self, rows):
        return self.inner.keep(rows)


def test_step_join_gives_the_logits_of_a_step_and_a_join_in_one_forward(model):
    model, tokenizer = model
    p0, p1, p2 = prompts(tokenizer, 3)
    p2 = p2 + p1[-3:]  # prompts of different lengths, right-padded together
    new = torch.zeros(2, len(p2), dtype=torch.long)
    new[0, :len(p1)], new[1] = torch.tensor(p1), torch.tensor(p2)
    lens = torch.tensor([len(p1), len(p2)])
    with torch.inference_mode():
        apart, mixed = model.decoder(torch.float32), model.decoder(torch.float32)
        for d in (apart, mixed):
            d.join(torch.tensor([p0]), torch.tensor([len(p0)]), 3, 12)  # 3 rows decoding
            d.step(torch.tensor([5, 6, 7]))
        want = torch.cat([apart.step(torch.tensor([8, 9, 10])), apart.join(new, lens, 2, 12)]).clone()
        got = mixed.step_join(torch.tensor([8, 9, 10]), new, lens, 2, 12).clone()  # (3 + 2, V)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        tokens = torch.arange(3 + 2 * 2) + 20  # then every row, old and new, decodes alike
        torch.testing.assert_close(mixed.step(tokens).clone(), apart.step(tokens).clone(), rtol=1e-5, atol=1e-5)


class JoinOnly(NoJoin):
    """A decoder with join but no step_join: prompts are prefilled in a forward of their own."""

    def join(self, *args):
        return self.inner.join(*args)


class Counting(JoinOnly):
    """The real decoder, counting the forwards that mix a decode step with a prefill."""

    mixed = 0

    def step_join(self, *args):
        Counting.mixed += 1
        return self.inner.step_join(*args)


@pytest.mark.parametrize("wrapper", [Counting, JoinOnly])
def test_requests_arriving_while_others_decode_equal_generate_with_or_without_step_join(model, monkeypatch, wrapper):
    model, tokenizer = model
    real = model.decoder
    monkeypatch.setattr(model, "decoder", lambda dtype: wrapper(real(dtype)))
    Counting.mixed = 0
    engine = Engine(model, tokenizer.stop_ids)
    try:
        ps = prompts(tokenizer, 5)
        reqs = []
        for i, p in enumerate(ps):
            reqs.append(engine.submit(Request(p, 1 + i % 2, 16, 1.0, 30, [11 * i + g for g in range(1 + i % 2)])))
            time.sleep(0.003)  # the next one arrives while this one decodes
        wait(reqs)
    finally:
        engine.close()
    monkeypatch.undo()
    for i, (p, req) in enumerate(zip(ps, reqs)):
        alone = generate(model, [p], 1 + i % 2, 16, 1.0, 30, tokenizer.stop_ids, seeds=[11 * i + g for g in range(1 + i % 2)])
        assert req.tokens == alone.completions
    assert (Counting.mixed > 0) == (wrapper is Counting)


def test_a_decoder_without_join_serves_one_request_at_a_time(model, monkeypatch):
    model, tokenizer = model
    real = model.decoder
    monkeypatch.setattr(model, "decoder", lambda dtype: NoJoin(real(dtype)))
    engine = Engine(model, tokenizer.stop_ids)
    try:
        ps = prompts(tokenizer, 3)
        reqs = [engine.submit(Request(p, 2, 12, 1.0, None, [7 * i, 7 * i + 1])) for i, p in enumerate(ps)]
        wait(reqs)
    finally:
        engine.close()
    monkeypatch.undo()
    for i, (p, req) in enumerate(zip(ps, reqs)):
        alone = generate(model, [p], 2, 12, 1.0, None, tokenizer.stop_ids, seeds=[7 * i, 7 * i + 1])
        assert req.tokens == alone.completions


def test_bad_requests_raise_and_a_failing_model_ends_requests_with_error(model, monkeypatch):
    model, tokenizer = model
    engine = Engine(model, tokenizer.stop_ids)
    try:
        with pytest.raises(RlkitError, match="exceeds the model's 1280 positions"):
            engine.submit(Request([1] * 1200, 1, 81))
        with pytest.raises(RlkitError, match="samples"):
            engine.submit(Request([1], 0, 4))
        monkeypatch.setattr(engine.decoder, "step", lambda tok: 1 / 0)
        threading.excepthook, hook = (lambda args: None), threading.excepthook  # the thread's traceback: expected
        try:
            req = engine.submit(Request([1, 2], 1, 5))
            wait([req])
        finally:
            threading.excepthook = hook
        assert req.finish == ["error"] and "ZeroDivisionError" in engine.error
        with pytest.raises(RlkitError, match="closed after an error"):
            engine.submit(Request([1], 1, 4))
    finally:
        engine.close()


class Chars:
    """A stand-in tokenizer: token i is chr(i) as UTF-8 bytes split per byte when i >= 256 (ids are bytes)."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_split_characters_and_stop_string_prefixes():
    text = TextStream(Chars(), stop=["STOP", "##"])
    pieces = [text.feed(list(chunk)) for chunk in (b"ab", "\u00e9".encode()[:1], "\u00e9".encode()[1:], b"cS",
                                                   b"T", b"x#", b"#tail")]
    assert pieces == ["ab", "", "\u00e9", "c", "", "STx", ""]
    assert text.stopped and text.text == "ab\u00e9cSTx" and text.finish() == ""
    plain = TextStream(Chars())
    assert plain.feed(list(b"hi #")) == "hi #" and plain.finish() == "" and plain.text == "hi #"


def test_an_ended_row_leaves_the_batch_before_it_outgrows_its_kv_room(model):
    """A row whose prompt nearly fills the cache ends alone while 15 rows decode on: it must leave the batch
    before the next step would write past its room (generate()'s batches keep ended rows for a while)."""
    model, tokenizer = model
    engine = Engine(model, [], max_rows=64)  # no stop tokens: rows end at their max_new_tokens
    try:
        short = prompts(tokenizer, 1)[0]
        long = (short * 1200)[:1200]
        with engine._cond:  # admitted together: one join of 16 rows
            many = engine.submit(Request(short, 15, 40, 1.0, 20, list(range(15))))
            one = engine.submit(Request(long, 1, 3, 1.0, 20, [99]))
        wait([many, one])
    finally:
        engine.close()
    assert engine.error is None and many.finish == ["length"] * 15 and one.finish == ["length"]
    assert one.tokens == generate(model, [long], 1, 3, 1.0, 20, seeds=[99]).completions
    assert many.tokens == generate(model, [short], 15, 40, 1.0, 20, seeds=list(range(15))).completions


def test_rows_with_different_sampling_settings_in_one_batch_each_draw_by_their_own(model):
    model, tokenizer = model
    settings = [(1.0, 5), (0.0, None), (0.7, None), (1.0, 5), (1.3, 40)]
    engine = Engine(model, tokenizer.stop_ids)
    try:
        with engine._cond:  # one batch: admitted in the same step
            reqs = [engine.submit(Request(p, 2, 12, temperature, k, [3 * i, 3 * i + 1]))
                    for i, (p, (temperature, k)) in enumerate(zip(prompts(tokenizer, 5), settings))]
        wait(reqs)
    finally:
        engine.close()
    for i, (req, (temperature, k)) in enumerate(zip(reqs, settings)):
        alone = generate(model, [req.prompt], 2, 12, temperature, k, tokenizer.stop_ids, seeds=[3 * i, 3 * i + 1])
        assert req.tokens == alone.completions
