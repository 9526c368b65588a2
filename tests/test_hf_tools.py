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


QUESTION = [{"role": "user", "content": "What is 12 times 4?"}]


@pytest.fixture(scope="module")
def taught(policy):
    """The policy after learning the reply with the call by heart; (prompt, reply, forced part)."""
    tok = policy.tokenizer
    t = tok.tool_tokens
    prompt = tok.render_for_completion(QUESTION)
    forced = [*t.output_start, *tok.encode("48"), *t.output_end]
    reply = tok.encode(CALL) + forced + tok.encode("It is 48.") + [tok.stop_ids[0]]
    ids = torch.tensor([prompt + reply])
    torch.manual_seed(0)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(150):
        loss = policy(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prompt, reply, forced


def test_an_hf_model_completes_a_calculator_call_through_the_engine(policy, plugins, taught):
    tok = policy.tokenizer
    prompt, reply, forced = taught
    box = toolbox(plugins, [{"name": "calculator"}], tok, "test.tools")
    out = generate(policy, [prompt], 1, len(reply) + 4, temperature=0, stop_tokens=tok.stop_ids, tools=box)
    tokens, mask = out.completions[0], out.mask[0, len(prompt):len(prompt) + len(out.completions[0])].tolist()
    n = len(tok.encode(CALL))
    assert tokens[:n] == tok.encode(CALL) and out.tool_calls == [1] and out.tool_errors == [0]
    assert tokens[n:n + len(forced)] == forced  # the calculator's "48" in the template's wrapper, forced
    assert mask == [1] * n + [0] * len(forced) + [1] * (len(tokens) - n - len(forced))


def test_serve_with_a_tool_runs_the_call_server_side_and_keeps_the_400_for_openai_tools(policy, plugins, taught):
    from fastapi.testclient import TestClient

    from rlkit.cli.openai_api import Limits
    from rlkit.cli.server import make_app
    from rlkit.lib.generation.engine import Engine

    tok = policy.tokenizer
    engine = Engine(policy, tok.stop_ids, max_rows=4)
    try:
        app = make_app(engine, tok, "test", Limits(), tools=toolbox(plugins, [{"name": "calculator"}], tok, "--tool"))
        client = TestClient(app)
        body = {"model": "test", "messages": QUESTION, "temperature": 0, "max_tokens": 150}
        text = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert '"expression": "12*4"' in text and "<tool_response>\n48\n</tool_response>" in text
        assert text.endswith("It is 48.")
        refused = client.post("/v1/chat/completions", json={**body, "tools": [{"type": "function"}]})
        assert refused.status_code == 400 and "tools" in refused.text
    finally:
        engine.close()
