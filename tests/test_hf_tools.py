"""An hf model whose chat template supports tools (Hermes/Qwen: <tool_call>{json}</tool_call>, the reply in a
<tool_response> user turn) completes a calculator call through the same engine: the hf tokenizer reports the
call tokens and the output wrapper read off its template, the engine hands the call's arguments to the tool
and forces the wrapper + output with mask 0. The tiny random model first learns one reply by heart (a few
dozen steps), so greedy decoding makes the call."""
import os
from pathlib import Path

import pytest
import torch

from hf_fixtures import TOOLS_TEMPLATE, hf_model
from rlkit.core.plugins import load_plugins
from rlkit.lib.generation.sampling import generate
from rlkit.lib.generation.tools import toolbox

ROOT = Path(__file__).resolve().parents[1]
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12*4"}}\n</tool_call>'


@pytest.fixture(scope="module")
def plugins():
    os.environ.setdefault("RLKIT_LOAD_PLUGINS", "")
    found = load_plugins()
    return found if "calculator" in found.tables["tool"] else load_plugins([ROOT / "rlkit/plugins/tools/calculator.py"])


@pytest.fixture(scope="module")
def policy(plugins, tmp_path_factory):
    folder = hf_model(tmp_path_factory.mktemp("hf-tools"), "qwen2", chat_template=TOOLS_TEMPLATE)
    return plugins.tables["model"]["hf"](None, 256, path=str(folder), dtype="float32")


def test_the_template_gives_the_call_tokens_and_the_output_wrapper(policy):
    tok = policy.tokenizer
    t = tok.tool_tokens
    assert t.json_calls and tok.tok.convert_ids_to_tokens([t.call_start, t.call_end]) == ["<tool_call>", "</tool_call>"]
    assert tok.tok.decode(list(t.output_start)) == "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
    assert tok.tok.decode(list(t.output_end)) == "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def test_an_hf_model_completes_a_calculator_call_through_the_engine(policy, plugins):
    tok = policy.tokenizer
    t = tok.tool_tokens
    prompt = tok.render_for_completion([{"role": "user", "content": "What is 12 times 4?"}])
    forced = [*t.output_start, *tok.encode("48"), *t.output_end]
    reply = tok.encode(CALL) + forced + tok.encode("It is 48.") + [tok.stop_ids[0]]
    ids = torch.tensor([prompt + reply])
    torch.manual_seed(0)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(150):  # learn the reply by heart
        loss = policy(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    box = toolbox(plugins, [{"name": "calculator"}], tok, "test.tools")
    out = generate(policy, [prompt], 1, len(reply) + 4, temperature=0, stop_tokens=tok.stop_ids, tools=box)
    tokens, mask = out.completions[0], out.mask[0, len(prompt):len(prompt) + len(out.completions[0])].tolist()
    n = len(tok.encode(CALL))
    assert tokens[:n] == tok.encode(CALL) and out.tool_calls == [1] and out.tool_errors == [0]
    assert tokens[n:n + len(forced)] == forced  # the calculator's "48" in the template's wrapper, forced
    assert mask == [1] * n + [0] * len(forced) + [1] * (len(tokens) - n - len(forced))
