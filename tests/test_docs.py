"""docs/plugins.md documents every hook under its exact signature, and nothing else, and every
example plugin in it works: each section's python block is loaded as a plugin file through
the real plugin manager and its callable is exercised against the contract.
"""
import inspect
import re
import tomllib
from pathlib import Path

import pluggy
import pytest
import yaml

from rlkit.core import hookspecs
from rlkit.core.plugins import KINDS, load_plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.M)


def signature(fn) -> str:
    """`name(args) -> ret` as inspect renders it, annotations evaluated ('dict', not "'dict'")."""
    try:
        return f"{fn.__name__}{inspect.signature(fn, eval_str=True)}"
    except Exception:  # an annotation that cannot be evaluated: fall back to its text
        return f"{fn.__name__}{inspect.signature(fn)}"


def hooks() -> dict[str, str]:
    """{hook name: exact signature} for every hookspec, cross-checked with a real plugin manager."""
    specs = {name: fn for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "rlkit_spec")}
    pm = pluggy.PluginManager("rlkit")
    pm.add_hookspecs(hookspecs)
    assert set(specs) == {name for name, caller in vars(pm.hook).items() if caller.has_spec()}
    return {name: signature(fn) for name, fn in specs.items()}


def sections() -> dict[str, str]:
    """{heading text: body up to the next heading of the same or higher level} for every `##` heading."""
    text = DOC.read_text()
    found = list(HEADING.finditer(text))
    out = {}
    for i, m in enumerate(found):
        if len(m.group(1)) != 2:
            continue
        end = next((n.start() for n in found[i + 1:] if len(n.group(1)) <= 2), len(text))
        out[m.group(2)] = text[m.end():end]
    return out


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_hooks_are_found():
    assert {"rlkit_rewards", "rlkit_tasks", "rlkit_optimizers", "rlkit_algorithms"} <= set(hooks())
    assert {hook for hook, _ in KINDS.values()} == set(hooks())  # every kind has a hook and vice versa


@pytest.mark.parametrize("hook", sorted(hooks()))
def test_every_hook_is_documented_under_its_exact_signature(hook):
    heading = f"`{hooks()[hook]}`"
    assert heading in sections(), f"docs/plugins.md needs a section headed: ## {heading}"


def test_docs_document_no_hook_that_does_not_exist():
    headings = [h for m in HEADING.finditer(DOC.read_text()) for h in [m.group(2)] if re.search(r"rlkit_\w+\s*\(", h)]
    valid = {f"`{sig}`" for sig in hooks().values()}
    stale = [h for h in headings if h not in valid]
    assert not stale, f"headings naming no hook (or with a stale signature): {stale}; hooks are {sorted(valid)}"
    assert len(headings) == len(set(headings)), "a hook is documented twice"


CONTRACT = {  # words each hook's section must explain
    "rlkit_stages": ["config", "run(ctx", "start", "Checkpoint", "check(cfg", "report(summary", "kind:", "init:",
                     "output.json", "resume"],
    "rlkit_models": ["tokenizer", "seq_len", "spec()", "decoder(dtype)", "prefill", "step", "keep", "max_len",
                     "logit_softcap", 'loss_reduction="none"'],
    "rlkit_rewards": ["completion", "example", "float", "weight"],
    "rlkit_tasks": ["split", "messages", "answer", "####", '"train"', '"test"'],
    "rlkit_optimizers": ["model", "initial_lr", "param_roles"],
    "rlkit_tools": ["call: str", "error:", "mask 0", "never raises", "timeout", "max_calls", "max_output_tokens",
                    "tools: [{name, args}]", "calculator", "python"],
    "rlkit_envs": ["example", "reset(seed", "step(text", "Step(messages, reward, done)", "mask 0", "max_turns",
                   "env: {name", "off the decode thread"],
    "rlkit_algorithms": ["advantages", "(P, G)", "loss", "(B, T)", "(B,)", "needs", "old_logp", "ref_logp",
                         "num_tokens", "num_sequences"],
}


@pytest.mark.parametrize("hook", sorted(CONTRACT))
def test_each_section_states_the_callable_contract(hook):
    body = sections()[f"`{hooks()[hook]}`"]
    missing = [word for word in CONTRACT[hook] if word not in body]
    assert not missing, f"{hook} section does not mention {missing}"


def test_docs_cover_discovery_and_packaging():
    text = DOC.read_text()
    for word in ["entry point", "RLKIT_LOAD_PLUGINS", "plugins:", "--plugin", "[project.entry-points.rlkit]",
                 "RLKIT_TRACE_PLUGINS", "args", "rlkit plugins"]:
        assert word in text, word
    for block in code_blocks(text, "yaml"):
        yaml.safe_load(block)
    for block in code_blocks(text, "toml"):
        assert "rlkit" in tomllib.loads(block)["project"]["entry-points"]


# --- the examples run ------------------------------------------------------------------------

def load_example(hook, tmp_path, monkeypatch):
    """The section's first python block as a plugin file: (kind, {name: callable}) it provides."""
    blocks = code_blocks(sections()[f"`{hooks()[hook]}`"], "python")
    assert blocks, f"the {hook} section has no python example"
    path = tmp_path / f"{hook}_example.py"
    path.write_text(blocks[0])
    monkeypatch.setenv("RLKIT_LOAD_PLUGINS", "")
    found = load_plugins([path])
    info = next(i for i in found.infos if i.name == str(path))
    kind = next(kind for kind, (h, _) in KINDS.items() if h == hook)
    assert list(info.provides) == [kind], info.provides
    return {name: found.tables[kind][name] for name in info.provides[kind]}, found


def test_reward_example_runs(tmp_path, monkeypatch):
    rewards, _ = load_example("rlkit_rewards", tmp_path, monkeypatch)
    for reward in rewards.values():
        example = {"messages": [{"role": "user", "content": "1+1?"}], "answer": "#### 2"}
        values = [reward(text, example) for text in ["", "#### 2", "x" * 1000]]
        assert all(isinstance(v, (int, float)) for v in values)
    assert [rewards["short"]("x" * n, {}, max_chars=200) for n in (0, 50, 200, 999)] == [0.0, -0.25, -1.0, -1.0]


def test_task_example_runs(tmp_path, monkeypatch):
    tasks, found = load_example("rlkit_tasks", tmp_path, monkeypatch)
    gsm8k = found.tables["reward"]["gsm8k"]
    for factory in tasks.values():
        train, test = factory("train"), factory("test")
        assert len(train) > 0 and len(test) > 0
        for ex in list(train)[:50] + list(test)[:50]:
            assert ex["messages"][0]["role"] == "user" and ex["messages"][-1]["role"] == "assistant"
            assert gsm8k(ex["messages"][-1]["content"], ex) == 1.0  # the reference solution scores 1
        assert [train[i] for i in range(5)] == [factory("train")[i] for i in range(5)]  # deterministic
        questions = lambda t: {ex["messages"][0]["content"] for ex in t}  # noqa: E731
        assert not questions(train) & questions(test), "train and test share problems"


def test_tool_example_runs(tmp_path, monkeypatch):
    tools, _ = load_example("rlkit_tools", tmp_path, monkeypatch)
    convert = tools["convert"]
    assert convert("12 km") == "7.46 mi" and convert("10 kg", digits=1) == "22 lb"
    assert all(convert(bad).startswith("error: ") for bad in ["", "12", "x km", "1 parsec", "1 2 3"])


def test_env_example_runs(tmp_path, monkeypatch):
    envs, _ = load_example("rlkit_envs", tmp_path, monkeypatch)
    env = envs["count_on"]({}, turns=2)
    first = env.reset(3)
    start = int(first[0]["content"].split()[3].rstrip("."))
    assert env.reset(3) == first and tuple(env.step(f"{start + 1}")) == ([{"role": "user", "content": str(start + 2)}],
                                                                      1.0, False)
    assert tuple(env.step(f"It is {start + 3}")) == ([], 1.0, True)
    env.reset(3)
    assert tuple(env.step("no idea")) == ([], 0.0, True)


def test_optimizer_example_runs(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from rlkit.lib.training.optim import set_lr

    optimizers, _ = load_example("rlkit_optimizers", tmp_path, monkeypatch)
    for factory in optimizers.values():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
        opt = factory(model)
        assert all("initial_lr" in g for g in opt.param_groups)
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
        before = [p.detach().clone() for p in model.parameters()]
        model(torch.arange(10)).logsumexp(-1).mean().backward()
        opt.step()
        assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        set_lr(opt, 0.5)
        assert all(g["lr"] == 0.5 * g["initial_lr"] for g in opt.param_groups)


def test_algorithm_example_runs(tmp_path, monkeypatch):
    import torch

    algorithms, _ = load_example("rlkit_algorithms", tmp_path, monkeypatch)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])  # (P=2, G=4)
    for factory in algorithms.values():
        algo = factory()
        assert set(getattr(algo, "needs", ())) <= {"old_logp", "ref_logp"}
        assert algo.advantages(rewards).shape == (2, 4)
    # the dapo variant by hand: A = (r - mean) / (std + 1e-4); row 0: mean 0.5, std sqrt(1/3)
    dapo_kl = algorithms["dapo_kl"](beta=0.5)
    assert dapo_kl.filter_groups and dapo_kl.needs == {"old_logp", "ref_logp"}
    torch.testing.assert_close(dapo_kl.advantages(rewards)[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.8658754)
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], requires_grad=True)  # (B=2, T=3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    adv = torch.tensor([1.0, -2.0])
    old = logp.detach() - torch.log(torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))  # rho 2 on one token
    ref = logp.detach() + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # k3 = e - 1 - 1 on one token
    loss = dapo_kl.loss(logp, mask, adv, {"num_tokens": 8, "num_sequences": 4, "old_logp": old, "ref_logp": ref})
    # objective: min(2 * 1, 1.28 * 1) = 1.28; 1; -2; -2; minus 0.5 * (e - 2) on the last; over 8 tokens
    assert loss.item() == pytest.approx(-(1.28 + 1 - 2 - 2 - 0.5 * (torch.e - 2)) / 8, abs=1e-6)


def test_stage_example_is_a_stage_whose_check_names_the_key(tmp_path, monkeypatch):
    from rlkit.core.errors import RlkitError
    from rlkit.core.stage import Stage, StageSetup, check_fields

    stages, found = load_example("rlkit_stages", tmp_path, monkeypatch)
    noise = stages["noise"]
    assert isinstance(noise, Stage) and noise.config().steps >= 1
    setup = StageSetup("exp.yaml: stages.jitter", found, 1, None, tmp_path, has_start=True)
    noise.check(noise.config(), setup)  # the defaults pass
    with pytest.raises(RlkitError, match=r"^exp.yaml: stages.jitter.steps: 0 must be at least 1$"):
        check_fields(noise.config(steps=0), "exp.yaml: stages.jitter.")  # its bound, as core checks it on load
    with pytest.raises(RlkitError, match="needs a model to perturb"):
        noise.check(noise.config(), StageSetup("exp.yaml: stages.jitter", found, 1, None, tmp_path, has_start=False))


def test_model_example_decodes_what_its_training_forward_computes(tmp_path, monkeypatch):
    """The Decoder contract, checked numerically: prefill of right-padded prompts of different lengths,
    then steps, give the same next-token logits as the training forward over the whole sequence."""
    import torch

    models, _ = load_example("rlkit_models", tmp_path, monkeypatch)

    class Tok:
        vocab_size = 50

    torch.manual_seed(0)
    model = models["window_lm"](Tok(), 64, window=3, width=8)
    assert model.spec() == {"window": 3, "width": 8}
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    more = [[20, 21, 22], [30, 31, 32]]  # the tokens each row is then fed
    idx = torch.zeros(2, 5, dtype=torch.long)
    for p, prompt in enumerate(prompts):
        idx[p, :len(prompt)] = torch.tensor(prompt)
    with torch.no_grad():
        dec = model.decoder(torch.float32)
        got = [dec.prefill(idx, torch.tensor([5, 2]), 1, 3)]
        got += [dec.step(torch.tensor([more[0][t], more[1][t]])) for t in range(3)]
        for p in range(2):
            full = model(torch.tensor([prompts[p] + more[p]]))[0]  # (T, V)
            want = full[len(prompts[p]) - 1:]
            torch.testing.assert_close(torch.stack([g[p] for g in got]), want)
