"""The supervised half of the pipeline: tokenizer -> pretrain -> midtrain -> sft, run as a user runs it.

One tiny run (depth 1, vocab 512, arithmetic task) goes through the real `rlkit run` once per module;
the tests read what it printed and wrote. Smaller checks build the pieces a stage uses directly:
the sft loss mask is checked on the gradient, a checkpoint on bit-identical logits.
"""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.core import pipeline
from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint
from rlkit.core import handoff
from rlkit.core.errors import RlkitError
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.core.plugins import load_plugins
from rlkit.plugins.stages.sft_run import collate, held_out_accuracy
from rlkit.lib.text.task import example_text, prompt_messages
from rlkit.lib.text.tokenizer import Tokenizer, train_tokenizer

from experiments import MIDTRAIN, PRETRAIN, SFT, TOKENIZER, TOP, adamw, without, write_experiment

# tiny supervised pipeline for tests: rlkit run experiment.yaml
PIPELINE = {"tokenizer": {**TOKENIZER, "vocab_size": 512},
            "pretrain": {**PRETRAIN, "steps": 40, "optimizer": adamw(0.005),  # 1024 tokens: one pass of 8 rows x 128
                         "warmdown_frac": 0.0, "eval_tokens": 2048, "log_every": 5},
            "midtrain": MIDTRAIN,
            "sft": {**SFT, "steps": 10, "device_batch_size": 4,  # 2 accumulation passes
                    "init_lr_frac": 1.0, "eval_examples": 8, "eval_max_new_tokens": 32, "log_every": 5}}
STAGES = ("tokenizer", "pretrain", "midtrain", "sft")


def _invoke(*args):
    """The real `rlkit` app (the module-scoped run cannot use conftest's function-scoped `cli`)."""
    from rlkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])




@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(folder, CLI result) of one finished run of PIPELINE, made in its own folder."""
    folder = tmp_path_factory.mktemp("pipeline")
    write_experiment(folder / "experiment.yaml", PIPELINE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = _invoke("run", "experiment.yaml")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return folder, result


def _losses(output: str, stage: str) -> list[float]:
    return [float(x) for x in re.findall(rf"^\[{stage}\] step +\d+/\d+ \| [\d,]+ tok/s \| loss ([\d.]+)", output, re.M)]


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (checkpoints, tokenizer, config)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}  # the lock names its last holder


# --------------------------------------------------------------------------- the full run

def test_pretrain_loss_falls_and_ends_in_a_done_checkpoint(finished):
    folder, result = finished
    losses = _losses(result.output, "pretrain")
    assert len(losses) == 8  # log_every 5 over 40 steps
    # a fresh model starts near ln(512) = 6.2; 40 steps on arithmetic text must cut that clearly
    assert losses[-1] < losses[0] - 1.0, losses
    assert losses[-1] < 0.6 * 6.2, losses
    found = latest_checkpoint(folder / "runs/tiny/pretrain")
    assert found is not None and found.name == "step_000040"
    meta = json.loads((found / "meta.json").read_text())
    assert meta["done"] is True and meta["step"] == 40
    assert meta["model"] == {"name": "gpt", "args": {"depth": 1, "head_dim": 64, "softcap": 15.0}, "seq_len": 128}
    assert meta["tokenizer"] == "../../tokenizer"  # relative to the checkpoint: a moved run still loads


def test_each_stage_starts_from_the_previous_checkpoint(finished):
    folder, result = finished
    assert "[midtrain] starting from runs/tiny/pretrain/step_000040" in result.output
    assert "[sft] starting from runs/tiny/midtrain/step_000010" in result.output
    run_dir = folder / "runs/tiny"
    assert all(handoff.finished(run_dir / s) is not None for s in STAGES)
    assert handoff.read_output(run_dir / "sft").path == run_dir / "sft/step_000010"
    assert (run_dir / "config.yaml").is_file()
    assert _losses(result.output, "sft"), "sft printed no loss lines"


def _greedy_reply(model, tokenizer, messages, max_new_tokens):
    """The model's greedy reply to a chat, decoded one full forward pass per token (no KV cache): written apart
    from rlkit's generate, so the two agree only if both decode what the model says."""
    ids = tokenizer.render_for_completion(messages)
    reply = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(torch.tensor([ids + reply]))[0, -1, :tokenizer.vocab_size].argmax().item()
            if token in tokenizer.stop_ids:
                break
            reply.append(token)
    return tokenizer.decode(reply)


def test_sft_prints_its_held_out_accuracy(finished):
    """The printed accuracy is the share of the first 8 test problems whose greedy reply (32 tokens at most)
    the gsm8k reward scores correct, recomputed here from the finished sft checkpoint."""
    folder, result = finished
    match = re.search(r"^\[sft\] held-out accuracy \(greedy, 8 problems\): (\d\.\d{3})$", result.output, re.M)
    assert match, result.output
    state, _, meta = load_checkpoint(folder / "runs/tiny/sft/step_000010")
    tokenizer = Tokenizer.load(folder / "runs/tiny/tokenizer")
    model = GPT(GPTConfig(**meta["model"]["args"], vocab_size=tokenizer.vocab_size, seq_len=128))
    model.load_state_dict(state)
    plugins = load_plugins()
    problems = plugins.tables["task"]["arithmetic"]("test", size=500)
    gsm8k = plugins.tables["reward"]["gsm8k"]
    replies = [_greedy_reply(model.eval(), tokenizer, prompt_messages(problems[i]), 32) for i in range(8)]
    scores = [gsm8k(reply, problems[i]) for i, reply in enumerate(replies)]
    assert match.group(1) == f"{sum(score > 0.5 for score in scores) / 8:.3f}", (replies, scores)
    # the two samples it shows are the first two problems' replies, with their scores
    shown = re.findall(r"^\[sft\] sample: .* -> (.*) \((.*)\)$", result.output, re.M)
    assert shown == [(repr(replies[i][:120]), f"{scores[i]:g}") for i in range(2)]


COMMA_REWARD = """\
import rlkit


@rlkit.hookimpl
def rlkit_rewards():
    return {"comma": lambda completion, example: float("," in completion)}
"""


def test_sft_held_out_accuracy_counts_the_replies_its_reward_scores_correct(finished, experiment, write_file,
                                                                             tmp_path, stage_ctx, capsys):
    """The trained model answers no test problem right (gsm8k accuracy 0), so the sft stage's evaluation is
    also run with a reward that some of its replies pass: a reply with a comma. The accuracy it prints, and
    keeps in the summary, is the share of the 8 greedy replies recomputed here that have one."""
    folder, _ = finished
    write_file("comma.py", COMMA_REWARD)
    path = experiment({"tokenizer": PIPELINE["tokenizer"],
                       "sft": {**PIPELINE["sft"], "eval_reward": {"name": "comma"}}}, plugins=["./comma.py"])
    ctx = stage_ctx(path, "sft", tmp_path / "runs/tiny")
    model, tokenizer = ctx.load_model(handoff.Checkpoint.open(folder / "runs/tiny/sft/step_000010"))
    problems = load_plugins().tables["task"]["arithmetic"]("test", size=500)
    replies = [_greedy_reply(model.eval(), tokenizer, prompt_messages(problems[i]), 32) for i in range(8)]
    expected = sum("," in reply for reply in replies) / 8
    assert 0 < expected < 1, replies  # the check tells a right count from "all" and "none"
    held_out_accuracy(ctx, model, tokenizer)
    assert f"[sft] held-out accuracy (greedy, 8 problems): {expected:.3f}\n" in capsys.readouterr().out
    assert ctx.summary["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_a_second_run_into_the_same_run_dir_fails_and_keeps_the_first(finished, cli, monkeypatch):
    folder, _ = finished
    monkeypatch.chdir(folder)
    before = _digest(folder / "runs")
    result = cli("run", "experiment.yaml")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "runs/tiny" in lines[0] and "--resume" in lines[0]
    assert "Traceback" not in result.output + result.stderr
    assert _digest(folder / "runs") == before  # checkpoints, tokenizer and config untouched


def test_resume_skips_finished_stages(finished, cli, monkeypatch):
    folder, _ = finished
    monkeypatch.chdir(folder)
    checkpoints = {p: _digest(folder / "runs/tiny" / p) for p in STAGES}
    result = cli("run", "experiment.yaml", "--resume")
    assert result.exit_code == 0, result.output + result.stderr
    for stage in STAGES:
        assert f"[{stage}] already finished: skipping (--resume)" in result.stdout
    assert not re.search(r"^\[\w+\] (step|new model|starting from)", result.stdout, re.M)  # nothing retrained
    assert {p: _digest(folder / "runs/tiny" / p) for p in STAGES} == checkpoints


# --------------------------------------------------------------------------- pieces

@pytest.fixture(scope="module")
def tokenizer():
    texts = [example_text(ex) for ex in load_plugins().tables["task"]["arithmetic"]("train", size=300)]
    return train_tokenizer(texts, 300)


def _perturbed_gpt(vocab_size, seed=0, seq_len=128):
    """A tiny GPT whose weights are all non-zero (the init zeroes the output projections)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(depth=1, vocab_size=vocab_size, seq_len=seq_len))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_sft_masked_positions_get_no_gradient(tokenizer):
    """d(loss)/d(logits) is exactly zero at every position whose target is masked (user text, padding)."""
    task = load_plugins().tables["task"]["arithmetic"]("train", size=3)
    rendered = [tokenizer.render_conversation(ex["messages"], max_len=129) for ex in task]
    x, y = collate(rendered)  # (B, T) each
    # targets are the next token where the mask is 1, else -1 (prompt, <|assistant_start|>, padding)
    for b, (ids, mask) in enumerate(rendered):
        for t in range(x.shape[1]):
            want = ids[t + 1] if t + 1 < len(ids) and mask[t + 1] == 1 else -1
            assert y[b, t].item() == want
    assert (y == -1).any() and (y >= 0).any()

    model = _perturbed_gpt(tokenizer.vocab_size)
    captured = {}

    def keep(module, inputs, output):  # the lm_head's output: every logit the loss sees comes from it
        output.retain_grad()
        captured["logits"] = output
    model.lm_head.register_forward_hook(keep)
    per_token = model(x, y, loss_reduction="none")  # (B, T), 0 where y == -1
    (per_token.sum() / (y >= 0).sum()).backward()  # the sft stage's step-wide token mean
    grad = captured["logits"].grad  # (B, T, padded vocab)
    assert torch.all(grad[y == -1] == 0)
    assert torch.all(grad[y >= 0].abs().sum(-1) > 0)
    assert torch.all(per_token[y == -1] == 0)


def test_checkpoint_reloads_to_bit_identical_logits(tokenizer, experiment, tmp_path, stage_ctx):
    path = experiment({"pretrain": {"data": {"source": "arithmetic"}, "optimizer": {"name": "adamw"}},
                       "sft": {"task": {"name": "arithmetic"}, "optimizer": {"name": "adamw"}}},
                      name="ck", seed=None, device=None, tracking=None, model={"depth": 1, "seq_len": 128})
    run_dir = tmp_path / "runs/ck"
    tokenizer.save(run_dir / "tokenizer")
    pre = stage_ctx(path, "pretrain", run_dir)
    model, _ = pre.load_model(handoff.Checkpoint(None, None, run_dir / "tokenizer"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    optimizer = pre.optimizer(pre.cfg.optimizer, model)
    ids = torch.tensor([tokenizer.encode("Mia has 12 apples. She buys 7 more.\n#### 19")])
    with torch.no_grad():
        before = model(ids)
    handle = pre.save(7, model, optimizer, {"data_position": None}, done=True)

    state, opt_state, meta = load_checkpoint(handle.path)
    assert meta["step"] == 7 and meta["done"] is True and opt_state is not None
    again = GPT(GPTConfig(**meta["model"]["args"], vocab_size=tokenizer.vocab_size, seq_len=128))
    again.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(again(ids), before)
    # the next stage builds the same model from that checkpoint, found by its path alone
    nxt, tok = stage_ctx(path, "sft", run_dir).load_model(handoff.Checkpoint.open(handle.path))
    assert tok.vocab_size == tokenizer.vocab_size
    with torch.no_grad():
        assert torch.equal(nxt(ids), before)


SGD_PLUGIN = """\
import torch

import rlkit


@rlkit.hookimpl
def rlkit_optimizers():
    return {"plain_sgd": sgd}


def sgd(model, lr=1.0):
    \"\"\"Plain SGD: one step moves the weights by exactly -lr * gradient.\"\"\"
    return torch.optim.SGD([{"params": list(model.parameters()), "initial_lr": lr}], lr=lr)
"""


def _one_sft_step(tmp_path, write_file, experiment, name, lr, device_batch_size):
    """Weights after one sft step with plain SGD from the same fresh model, on the same 8 conversations."""
    write_file("sgd.py", SGD_PLUGIN)
    path = experiment({"tokenizer": {**TOKENIZER, "vocab_size": 512},
                       "sft": {**without(SFT, "log_every"), "steps": 1, "device_batch_size": device_batch_size,
                               "optimizer": {"name": "plain_sgd", "args": {"lr": lr}}, "init_lr_frac": 1.0,
                               "warmdown_frac": 0.0}},
                      file=f"{name}.yaml", name=name, plugins=["./sgd.py"])
    pipeline.run(*pipeline.prepare(path, [], []))
    state, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "runs" / name / "sft"))
    return state


def test_sft_step_does_not_depend_on_device_batch_size(write_file, experiment, tmp_path, monkeypatch):
    """The sft loss is a mean over every trained token of the step (conversations differ in length), so
    4 passes of 2 conversations move the weights exactly as 1 pass of 8."""
    monkeypatch.chdir(tmp_path)
    start = _one_sft_step(tmp_path, write_file, experiment, "lr0", 0.0, 8)
    whole = _one_sft_step(tmp_path, write_file, experiment, "b8", 1.0, 8)
    split = _one_sft_step(tmp_path, write_file, experiment, "b2", 1.0, 2)
    moved = max((whole[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the step did something
    for k in start:
        torch.testing.assert_close(split[k], whole[k], rtol=0, atol=1e-6, msg=k)


# --------------------------------------------------------------------------- resume after a crash, late errors

SMALL = {"tokenizer": {**TOKENIZER, "vocab_size": 512},
         "pretrain": {**PRETRAIN, "steps": 20, "total_batch_tokens": 512, "optimizer": adamw(0.003), "log_every": 5,
                      "save_every": 10}}


def test_resume_after_a_crash_reaches_the_same_weights(experiment, tmp_path, monkeypatch, capsys):
    """Same data order, optimizer state and RNG: resuming from step 10 ends bit-identical to an unbroken run."""
    monkeypatch.chdir(tmp_path)
    path = experiment(SMALL, name="small", model={**TOP["model"], "seq_len": 64})
    pipeline.run(*pipeline.prepare(path, [], []))
    final = tmp_path / "runs/small/pretrain/step_000020"
    unbroken, _, _ = load_checkpoint(final)
    shutil.rmtree(final)  # as if the process died after saving step 10
    pipeline.run(*pipeline.prepare(path, [], []), resume=True)
    out = capsys.readouterr().out
    assert "[tokenizer] already finished: skipping (--resume)" in out
    assert "[pretrain] resuming at step 10" in out
    resumed, _, meta = load_checkpoint(final)
    assert meta["done"] is True
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def test_a_bad_eval_split_fails_before_training(experiment, tmp_path, monkeypatch, capsys):
    """size 2000 holds for the train split but the test split has only ~1457 distinct problems: the
    held-out evaluation cannot be built, which should be said before the first step, not after the last."""
    monkeypatch.chdir(tmp_path)
    path = experiment(SMALL, name="small", model={**TOP["model"], "seq_len": 64})
    cfg, plugins = pipeline.prepare(path, ["stages.pretrain.data.args.size=2000", "stages.pretrain.steps=5"], [])
    with pytest.raises(RlkitError, match="test problems"):
        pipeline.run(cfg, plugins)
    assert "[pretrain] step" not in capsys.readouterr().out


def test_sft_says_when_no_answer_fits_in_seq_len(experiment, tmp_path, monkeypatch):
    """At seq_len 32 every conversation is cut inside the question: no token is trained. The error
    should say so (model.seq_len), not blame the learning rate."""
    monkeypatch.chdir(tmp_path)
    path = experiment({"tokenizer": {**TOKENIZER, "vocab_size": 512},
                       "sft": {**without(SFT, "log_every"), "steps": 2, "optimizer": {"name": "adamw"}}},
                      name="short", seed=None, model={**TOP["model"], "seq_len": 32})
    with pytest.raises(RlkitError, match="seq_len"):
        pipeline.run(*pipeline.prepare(path, [], []))
