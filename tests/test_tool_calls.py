"""Tool calls inside completions, in the one engine: a row that samples the call-end token gets the tool's output
forced in with mask 0 on exactly those tokens and samples on from it; with a KV cache it samples what
recomputing from scratch samples; its tokens do not depend on the batch; the Engine gives generate()'s tokens;
a failing, slow, chatty or insistent tool becomes an error text. The tiny GPT's vocabulary stands in for a
tokenizer: the call tokens are picked among the tokens it samples, and a toy decode writes a call's tokens
as an arithmetic expression for the real calculator plugin."""
import time
from collections import Counter

import pytest
import torch

from experiments import builtin_tools
from rlkit.lib.text.tokenizer import ToolTokens
from rlkit.lib.generation.draw import Sampling, draw, row_key
from rlkit.lib.generation.engine import Engine, Request
from rlkit.lib.generation.sampling import generate
from rlkit.lib.generation.tools import ToolLimits, Toolbox
from rlkit.plugins.models.gpt_model import GPT, GPTConfig

V, OUT_START, OUT_END = 100, 97, 98
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17], [42]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(depth=2, vocab_size=V, seq_len=96))
    with torch.no_grad():
        for p in [*m.param_roles()["matrix"], m.lm_head.weight]:
            p.normal_(0, 0.4)
    return m


@pytest.fixture(scope="module")
def calculator():
    return builtin_tools()["calculator"]


def decode(ids):  # a call's tokens as an expression: 12 37 5 -> "12+37+5"
    return "+".join(str(i) for i in ids)


def encode(text):  # an output's characters as tokens: digits 10..19, others 20..59
    return [10 + int(c) if c.isdigit() else 20 + ord(c) % 40 for c in text]


def box(tools, start, end, **limits):
    return Toolbox(tools, ToolTokens(start, end, (OUT_START,), (OUT_END,)), encode, decode, ToolLimits(**limits))


def call_tokens(completions):
    """(call_start, call_end): the two tokens sampled most often, so rows do call."""
    (a, _), (b, _) = Counter(t for c in completions for t in c).most_common(2)
    return a, b


def expected_mask(prompt, tokens, start, end, tool):
    """Walk a row as the engine should have written it: after each sampled call_end, [OUT_START] + the tool's
    output for the sampled tokens since the last call_start + [OUT_END], mask 0; every other token mask 1."""
    mask, k, sampled = [], 0, []
    while k < len(tokens):
        mask.append(1)
        sampled.append(tokens[k])
        k += 1
        if sampled[-1] == end:
            before = sampled[:-1]
            text = tool(decode(before[len(before) - before[::-1].index(start):])) if start in before else \
                "error: a call end without a call start"
            forced = [OUT_START, *encode(text), OUT_END]
            assert tokens[k:k + len(forced)] == forced[:len(tokens) - k]
            mask += [0] * len(forced[:len(tokens) - k])
            k += len(forced)
    return mask


def test_a_call_gets_the_tools_output_forced_with_mask_0_and_sampling_equals_recomputing(model, calculator):
    free = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8))).completions
    start, end = call_tokens(free)
    out = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8)), tools=box({"c": calculator}, start, end))
    assert sum(out.tool_calls) >= 3
    for r, tokens in enumerate(out.completions):
        prompt = PROMPTS[r // 2]
        mask = out.mask[r, len(prompt):len(prompt) + len(tokens)].tolist()
        assert mask == expected_mask(prompt, tokens, start, end, calculator)
        with torch.no_grad():  # the sampled tokens are the draws from a full forward of everything before them
            logits = model(torch.tensor([prompt + tokens]))[0, len(prompt) - 1:-1]
        t = torch.arange(len(tokens))
        again = draw(logits, torch.full_like(t, row_key(r)), t, Sampling(1.0))
        assert [a for a, m in zip(again.tolist(), mask) if m] == [x for x, m in zip(tokens, mask) if m]


def test_a_rows_tokens_with_calls_do_not_depend_on_the_batch(model, calculator):
    free = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8))).completions
    tools = box({"c": calculator}, *call_tokens(free))
    batch = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8)), tools=tools)
    for r in range(8):
        alone = generate(model, [PROMPTS[r // 2]], 1, 40, temperature=1.0, seeds=[r], tools=tools)
        assert alone.completions[0] == batch.completions[r] and alone.tool_calls[0] == batch.tool_calls[r]


def test_the_engine_gives_generates_tokens_with_calls(model, calculator):
    free = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8))).completions
    tools = box({"c": calculator}, *call_tokens(free))
    want = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8)), tools=tools)
    engine = Engine(model, stop_tokens=(), max_rows=8)
    try:
        reqs = [engine.submit(Request(p, 2, 40, 1.0, seeds=[2 * i, 2 * i + 1], tools=tools))
                for i, p in enumerate(PROMPTS)]
        deadline = time.monotonic() + 60
        while not all(r.done for r in reqs) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.close()
    assert [t for r in reqs for t in r.tokens] == want.completions
    for i, r in enumerate(reqs):
        for g, row in enumerate(r.rows):
            n = len(PROMPTS[i])
            assert row.mask == want.mask[2 * i + g, n:n + len(row.tokens)].tolist()


def forced_blocks(out, r, cut=False):
    """The row's runs of mask-0 tokens after its prompt (one cut by max_new_tokens only with `cut`)."""
    n, tokens = len(PROMPTS[r // 2]), out.completions[r]
    mask, blocks, k = out.mask[r, n:n + len(tokens)].tolist(), [], 0
    while k < len(tokens):
        if mask[k] == 0:
            j = k
            while j < len(tokens) and mask[j] == 0:
                j += 1
            blocks += [tokens[k:j]] if j < len(tokens) or cut else []
            k = j
        k += 1
    return blocks


def failing(call):
    raise RuntimeError("boom")


def slow(call):
    time.sleep(1.0)
    return "late"


@pytest.mark.parametrize("tool,limits,text", [
    (failing, {}, "error: RuntimeError: boom"),
    (slow, {"timeout": 0.1}, "error: the tool took longer than 0.1 s"),
    (lambda call: "9" * 50, {"max_output_tokens": 8}, "error: output longer than 8 tokens"),
])
def test_a_tool_that_fails_is_slow_or_chatty_gives_an_error_text_and_the_run_goes_on(model, tool, limits, text):
    free = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8))).completions
    start, end = call_tokens(free)
    began = time.monotonic()
    out = generate(model, PROMPTS, 2, 86, temperature=1.0, seeds=list(range(8)), tools=box({"t": tool}, start, end, **limits))
    assert sum(out.tool_calls) >= 3 and out.tool_errors == out.tool_calls
    outputs = Counter(tuple(block) for r in range(8) for block in forced_blocks(out, r))
    assert outputs[(OUT_START, *encode(text), OUT_END)] >= 1
    assert set(outputs) <= {(OUT_START, *encode(text), OUT_END),
                            (OUT_START, *encode("error: a call end without a call start"), OUT_END)}
    if tool is slow:  # every call waited at most its timeout (plus decoding), not the tool's second
        assert time.monotonic() - began < 0.5 * sum(out.tool_calls) + 3


def test_calls_past_max_calls_get_an_error_text(model, calculator):
    free = generate(model, PROMPTS, 2, 60, temperature=1.0, seeds=list(range(8))).completions
    start, end = call_tokens(free)
    out = generate(model, PROMPTS, 2, 86, temperature=1.0, seeds=list(range(8)),
                   tools=box({"c": calculator}, start, end, max_calls=1))
    limit = (OUT_START, *encode("error: no more tool calls (at most 1 a completion)"), OUT_END)
    for r in range(8):
        blocks = [tuple(b) for b in forced_blocks(out, r, cut=True)]
        assert len(blocks) == out.tool_calls[r]
        assert limit not in blocks[:1] and all(b == limit[:len(b)] and len(b) > 1 for b in blocks[1:])
    assert max(out.tool_calls) >= 2


def test_with_calls_the_training_log_probs_of_the_sampled_tokens_equal_the_samplers_in_fp32(model, calculator):
    """The rl update's forward (rl_update.forward) over rows with forced tool outputs gives every sampled token
    (mask 1) the log-probability the sampler reported, to 1e-5; forced tokens report none (0)."""
    from rlkit.plugins.stages.rl_update import forward

    free = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8))).completions
    out = generate(model, PROMPTS, 2, 40, temperature=1.0, seeds=list(range(8)), logprobs=True,
                   tools=box({"c": calculator}, *call_tokens(free)))
    assert sum(out.tool_calls) >= 3
    sampled, forced = out.mask[:, 1:] > 0, (out.mask[:, 1:] == 0) & (out.model_logprobs[:, 1:] != 0)
    x, y = out.ids[:, :-1], torch.where(sampled, out.ids[:, 1:], -1)
    with torch.no_grad():
        logp, _ = forward(model, x, y)
    assert (out.model_logprobs[:, 1:] - logp)[sampled].abs().max().item() < 1e-5
    outputs = sum(len(b) for r in range(8) for b in forced_blocks(out, r, cut=True))
    assert not forced.any() and outputs >= 3 * sum(out.tool_calls) - 2 * 8  # output_start, text, output_end
