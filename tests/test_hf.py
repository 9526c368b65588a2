"""The `hf` model plugin on tiny random transformers models built offline (tests/hf_fixtures.py): rlkit's training
path and sampler against transformers' own forward and generate, its chat template and loss mask, and whole
runs of sft and rl."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_fixtures import hf_model  # noqa: E402

from rlkit.core.errors import RlkitError  # noqa: E402
from rlkit.core.plugins import load_plugins  # noqa: E402
from rlkit.lib.generation.sampling import generate  # noqa: E402

from experiments import RL, SFT, adamw, task, write_experiment  # noqa: E402


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def folder(request, tmp_path_factory):
    return hf_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def policy(folder):
    return load_plugins().tables["model"]["hf"](None, 128, path=str(folder))


PROMPTS = [[{"role": "user", "content": "Mia has 3 apples. She buys 4 more. How many apples does Mia have?"}],
           [{"role": "user", "content": "What is 12 + 7?"}],
           [{"role": "user", "content": "A bus leaves with 20 passengers. 5 get off. How many are on the bus?"}]]


def test_token_logps_equal_transformers_forward_with_padding(policy):
    tok = policy.tokenizer
    seqs = [tok.render_conversation(p + [{"role": "assistant", "content": "The answer is 7.\n#### 7"}])[0]
            for p in PROMPTS]
    T = max(map(len, seqs)) - 1
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    y = torch.full((len(seqs), T), -1, dtype=torch.long)
    for b, s in enumerate(seqs):  # right-padded, as rlkit's stages batch them
        x[b, :len(s) - 1], y[b, :len(s) - 1] = torch.tensor(s[:-1]), torch.tensor(s[1:])
    with torch.no_grad():
        ours = -policy(x, y, loss_reduction="none")  # (B, T), 0 on padding
        for b, s in enumerate(seqs):  # transformers on each sequence alone: no padding at all
            logits = policy.model(input_ids=torch.tensor([s[:-1]])).logits[0].float()
            theirs = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(s[1:])[:, None])[:, 0]
            torch.testing.assert_close(ours[b, :len(s) - 1], theirs, rtol=0, atol=1e-5)
            assert torch.all(ours[b, len(s) - 1:] == 0)


def test_sft_mask_covers_the_assistant_turn_and_its_end_token(policy):
    tok = policy.tokenizer
    ids, mask = tok.render_conversation(PROMPTS[1] + [{"role": "assistant", "content": "#### 19"}])
    trained = tok.tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained.startswith("#### 19<|im_end|>"), trained
    assert "user" not in trained and "What is" not in trained
    assert ids[:sum(1 for m in mask if not m)] == tok.render_for_completion(PROMPTS[1])


def test_greedy_equals_generate_token_for_token(policy):
    tok = policy.tokenizer
    prompts = [tok.render_for_completion(p) for p in PROMPTS]  # three lengths, prefilled together
    out = generate(policy, prompts, samples=1, max_new_tokens=12, temperature=0.0, stop_tokens=tok.stop_ids)
    for prompt, ours in zip(prompts, out.completions):
        ref = policy.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    do_sample=False, max_new_tokens=12, eos_token_id=tok.stop_ids,
                                    pad_token_id=tok.tok.pad_token_id)[0, len(prompt):].tolist()
        assert ours == ref[:len(ours)] and len(ours) == len(ref), (ours, ref)


def test_a_seeded_row_is_the_same_alone_and_in_a_batch(policy):
    tok = policy.tokenizer
    prompts = [tok.render_for_completion(p) for p in PROMPTS]
    batch = generate(policy, prompts, samples=3, max_new_tokens=10, top_k=20, seeds=list(range(100, 109)))
    alone = generate(policy, prompts[1:2], samples=3, max_new_tokens=10, top_k=20, seeds=[103, 104, 105])
    assert batch.completions[3:6] == alone.completions
    assert len({tuple(c) for c in batch.completions}) > 1  # sampling, not greedy


def test_checkpoint_spec_rebuilds_the_model(policy, folder):
    again = load_plugins().tables["model"]["hf"](None, 128, **policy.spec())
    again.load_state_dict(policy.state_dict())
    x = torch.tensor([policy.tokenizer.render_for_completion(PROMPTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(again(x), policy(x), rtol=0, atol=0)
    assert json.loads(json.dumps(policy.spec())) == policy.spec()


BAD = {
    "missing-folder": (lambda f, t: t / "nowhere", "cannot load"),
    "no-chat-template": (lambda f, t: hf_model(t / "plain", chat_template=""), "has no chat template"),
    "vocab-too-small": (lambda f, t: _shrunk(f, t), "but the model's embedding only"),
}


def _shrunk(folder, tmp):
    out = tmp / "shrunk"
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config["vocab_size"] = 100
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("make, said", BAD.values(), ids=BAD.keys())
def test_a_bad_model_is_one_line_in_rlkit_check(make, said, folder, tmp_path, cli):
    model = make(folder, tmp_path)
    (tmp_path / "exp.yaml").write_text(f"""\
name: bad
model: {{name: hf, args: {{path: {model}}}, seq_len: 128}}
stages:
  sft: {{task: {{name: arithmetic}}, optimizer: {{name: adamw}}}}
""")
    result = cli("check", tmp_path / "exp.yaml")
    assert result.exit_code == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "exp.yaml: model.args: " in lines[0] and said in lines[0], result.stderr


DIGITS = '''\
import rlkit


@rlkit.hookimpl
def rlkit_rewards():
    return {"digits": lambda completion, example: sum(c in "0123456789" for c in completion) / max(1, len(completion))}
'''


def hf_run(folder: Path, model: Path, steps: int, save_every: int = 0, algorithm: str = "grpo",
           lora: dict | None = None, name: str = "hf-tiny", **rl_extra) -> str:
    """exp.yaml in `folder`: sft then rl on the tiny model; `lora` adds model args ({"r": 4, ...}), `rl_extra`
    keys to the rl entry."""
    (folder / "digits.py").write_text(DIGITS)
    write_experiment(
        folder / "exp.yaml",
        {"sft": {**SFT, "task": task(200), "steps": 4, "eval_examples": 4, "eval_max_new_tokens": 8},
         "rl": {**RL, "task": task(200), "algorithm": {"name": algorithm}, "rewards": [{"name": "digits"}],
                "optimizer": adamw(0.01),
                "rollout": {"samples": 8, "temperature": 1.0, "top_k": 0, "max_new_tokens": 8},
                "steps": steps, "examples_per_step": 4, "device_batch_size": 16, "init_lr_frac": 1.0, "log_every": 1,
                "save_every": save_every, **rl_extra}},
        comment="sft then rl (grpo) on a tiny random Llama from a local folder (tests)",
        name=name, plugins=["./digits.py"], tracking={"enabled": False},
        model={"name": "hf", "args": {"path": str(model), **({"lora": lora} if lora else {})}, "seq_len": 160,
               "dtype": "float32"})
    return str(folder / "exp.yaml")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return hf_model(tmp_path_factory.mktemp("llama-run"), "llama")


def test_sft_then_rl_on_an_hf_model_raises_the_reward(llama, tmp_path, monkeypatch, capsys):
    import re

    from rlkit.core import pipeline

    monkeypatch.chdir(tmp_path)
    pipeline.run(*pipeline.prepare(hf_run(tmp_path, llama, 16), [], []))
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"^\[sft\] step +\d+/\d+ \| [\d,]+ tok/s \| loss ([\d.]+)", out, re.M)]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    rewards = [float(x) for x in re.findall(r"^\[rl\] step +\d+/\d+ \| reward (-?[\d.]+)", out, re.M)]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.1 and last > 3 * first, rewards  # a random model writes ~2% digits
    meta = json.loads((tmp_path / "runs/hf-tiny/rl/step_000016/meta.json").read_text())
    assert meta["model"]["name"] == "hf" and meta["tokenizer"] is None  # the model brings its own


def test_an_hf_run_resumes_after_a_crash_to_the_same_weights(llama, tmp_path, monkeypatch):
    from rlkit.core import pipeline
    from rlkit.core.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    path = hf_run(tmp_path, llama, 4, save_every=2)
    pipeline.run(*pipeline.prepare(path, [], []))
    final = tmp_path / "runs/hf-tiny/rl/step_000004"
    unbroken, _, _ = load_checkpoint(final)
    shutil.rmtree(final)  # as if the process died after saving step 2
    pipeline.run(*pipeline.prepare(path, [], []), resume=True)
    resumed, _, _ = load_checkpoint(final)
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def test_export_round_trip_transformers_loads_what_rlkit_trained(llama, tmp_path, monkeypatch, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.core import pipeline, policy
    from rlkit.core.handoff import Checkpoint

    monkeypatch.chdir(tmp_path)
    pipeline.run(*pipeline.prepare(hf_run(tmp_path, llama, 2), [], []))
    result = cli("export", "runs/hf-tiny", "exported")
    assert result.exit_code == 0, result.stdout + result.stderr
    model, tok = AutoModelForCausalLM.from_pretrained("exported"), AutoTokenizer.from_pretrained("exported")
    ours, our_tok = policy.load(load_plugins(), Checkpoint.open("runs/hf-tiny/rl"))
    prompt = our_tok.render_for_completion(PROMPTS[0])
    assert tok.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_dict=False) == prompt
    greedy = generate(ours, [prompt], 1, 12, temperature=0.0, stop_tokens=our_tok.stop_ids).completions[0]
    theirs = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            do_sample=False, max_new_tokens=12, eos_token_id=our_tok.stop_ids,
                            pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    assert greedy == theirs[:len(greedy)] and len(greedy) == len(theirs)
    assert not torch.equal(model.lm_head.weight, AutoModelForCausalLM.from_pretrained(llama).lm_head.weight)  # trained


def test_export_of_an_hf_model_trained_with_rlkits_tokenizer_carries_it(tmp_path):
    """args.config with rlkit's own tokenizer (the HF quickstart's shape): the export converts the tokenizer, chat
    template included, and names its special ids, so transformers renders and generates as rlkit does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.lib.text.task import example_text
    from rlkit.lib.text.tokenizer import train_tokenizer

    texts = [example_text(ex) for ex in load_plugins().tables["task"]["arithmetic"]("train", size=300)]
    tok = train_tokenizer(texts, 300)
    torch.manual_seed(0)
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}
    ours = load_plugins().tables["model"]["hf"](tok, 128, config=config).eval()
    assert ours.export(tmp_path, tok) == []
    theirs, their_tok = AutoModelForCausalLM.from_pretrained(tmp_path).eval(), AutoTokenizer.from_pretrained(tmp_path)
    assert theirs.generation_config.eos_token_id == tok.stop_ids
    for messages in PROMPTS[:2]:
        prompt = tok.render_for_completion(messages)
        assert their_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == prompt
        greedy = generate(ours, [prompt], 1, 12, temperature=0.0, stop_tokens=tok.stop_ids).completions[0]
        hf = theirs.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=12)[0, len(prompt):].tolist()
        assert greedy == hf[:len(greedy)] and len(greedy) == len(hf), (greedy, hf)
    assert their_tok.decode(tok.encode(PROMPTS[0][0]["content"])) == PROMPTS[0][0]["content"]


def test_lora_trains_only_its_adapters_and_export_merges_them(llama, tmp_path, monkeypatch, cli):
    from transformers import AutoModelForCausalLM

    from rlkit.core import pipeline
    from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint

    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    policy = load_plugins().tables["model"]["hf"](None, 128, path=str(llama), lora=lora)
    c = policy.model.config  # q_proj: hidden -> heads x head_dim; v_proj: hidden -> kv_heads x head_dim
    head = c.hidden_size // c.num_attention_heads
    q, v = (c.hidden_size, c.num_attention_heads * head), (c.hidden_size, c.num_key_value_heads * head)
    expected = c.num_hidden_layers * 4 * (sum(q) + sum(v))  # r (in + out) per adapted matrix
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) == expected

    monkeypatch.chdir(tmp_path)
    path = hf_run(tmp_path, llama, 2, lora=lora)
    pipeline.run(*pipeline.prepare(path, [], []))
    state, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "runs/hf-tiny/rl"))
    assert state and all("lora_" in k for k in state) and sum(t.numel() for t in state.values()) == expected
    assert cli("export", "runs/hf-tiny", "merged").exit_code == 0
    merged, base = AutoModelForCausalLM.from_pretrained("merged"), AutoModelForCausalLM.from_pretrained(llama)
    prefix = "model.base_model.model.model.layers.0.self_attn.q_proj"
    A, B = state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"]
    assert B.abs().max() > 0  # the adapter trained
    want = base.model.layers[0].self_attn.q_proj.weight + (8 / 4) * B @ A
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, want)
    torch.testing.assert_close(merged.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _spy_on_the_reference(monkeypatch):
    """Record, at each ref_logp call: (x, y, the reference's log-probs, the policy's own, live Llama models)."""
    import gc

    from transformers import LlamaForCausalLM

    from rlkit.plugins.stages import rl_update

    policies, seen = [], []
    build_ref, ref_logp = rl_update.reference_model, rl_update.ref_logp

    def reference_model(ctx, model, *args):
        policies[:] = [model]  # this stage's policy only: an earlier run's is let go
        return build_ref(ctx, model, *args)

    def spy(ctx, reference, x, y, acc, key):
        out = ref_logp(ctx, reference, x, y, acc, key)
        gc.collect()
        with torch.no_grad():
            own = -policies[-1](x, y, loss_reduction="none")
        seen.append((x.clone(), y.clone(), out.clone(), own,
                     sum(type(o) is LlamaForCausalLM for o in gc.get_objects())))
        return out

    monkeypatch.setattr(rl_update, "reference_model", reference_model)
    monkeypatch.setattr(rl_update, "ref_logp", spy)
    return seen


def _logp(model, x, y):
    """Per-token log-probs of targets y from a transformers model (0 where y is -1)."""
    with torch.no_grad():
        logq = torch.log_softmax(model(input_ids=x).logits.float(), dim=-1)
    return logq.gather(2, y.clamp(min=0)[..., None])[..., 0] * (y != -1)


def test_a_lora_kl_reference_is_the_base_model_with_adapters_off_and_no_copy(llama, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from rlkit.core import pipeline

    seen = _spy_on_the_reference(monkeypatch)
    monkeypatch.chdir(tmp_path)
    pipeline.run(*pipeline.prepare(hf_run(tmp_path, llama, 3, algorithm="deepseek_grpo", lora=LORA), [], []))
    assert len(seen) == 6  # 4 prompts x 8 samples in micro-batches of 16: two a step
    assert all(models == 1 for *_, models in seen)  # the policy alone: no second model was built or copied
    base = AutoModelForCausalLM.from_pretrained(llama).eval()  # a fresh load of the base weights
    for x, y, ref, own, _ in seen:
        torch.testing.assert_close(ref, _logp(base, x, y), rtol=0, atol=1e-6)
    x, y, ref, own, _ = seen[-1]  # after sft's and two rl steps' adapter updates the policy has moved away
    assert (own - ref).abs().max() > 1e-3
    del base

    # reference.init set: the generic frozen copy of that checkpoint (here the sft entry's), a second model
    seen.clear()
    path = hf_run(tmp_path, llama, 1, algorithm="deepseek_grpo", lora=LORA, name="with-init",
                  reference={"init": "runs/hf-tiny/sft"})
    pipeline.run(*pipeline.prepare(path, [], []))
    assert len(seen) == 2 and all(models == 2 for *_, models in seen)
    for x, y, ref, own, _ in seen:
        torch.testing.assert_close(ref, own, rtol=0, atol=1e-6)  # step 1: the policy is still the sft checkpoint


def test_reward_model_scores_the_same_batched_and_one_by_one(tmp_path):
    import functools

    from transformers import LlamaConfig, LlamaForSequenceClassification

    from hf_fixtures import hf_tokenizer
    from rlkit.lib.evaluation.scoring import score

    tok = hf_tokenizer(tmp_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    reward = load_plugins().tables["reward"]["reward_model"]
    examples = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": f"#### {2 * i}"}
                for i in range(5)]
    texts = ["#### 2", "The answer is 4.\n#### 4", "no idea", "#### 6 because 3 + 3 = 6", ""]
    one_by_one = [reward(t, e, path=str(tmp_path)) for t, e in zip(texts, examples)]
    batched = score([("rm", 1.0, functools.partial(reward, path=str(tmp_path), batch_size=3))], texts, examples,
                    "at rl step 1")["rm"]
    torch.testing.assert_close(batched, torch.tensor(one_by_one), rtol=0, atol=1e-5)
    assert len(set(one_by_one)) == 5  # a real classifier: every text scores differently
