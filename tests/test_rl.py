"""RL end to end: a user's reward plugin file drives the rl stage, the reward rises, Aim records it.

The reward is learnable from a fresh model in a few steps: the share of a completion's characters
that are digits (about 10 of the ~300 tokens are digits, so a random model scores ~0.03). Each run
is tokenizer -> rl on a depth-1 model: the rl stage builds a fresh model when no earlier stage left
a checkpoint.
"""
import json
import re
import shutil

import pytest
import torch

from rlkit.core import pipeline
from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.scoring import score

from experiments import RL, TOKENIZER, adamw, task

REWARD_PLUGIN = '''\
"""A user's reward: the share of the completion's characters that are digits."""
import json

import rlkit


@rlkit.hookimpl
def rlkit_rewards():
    return {"digits": digits}


def digits(completion, example, log=None):
    value = sum(c in "0123456789" for c in completion) / max(1, len(completion))
    if log:  # the test's window on every call: what was scored, in order
        with open(log, "a") as f:
            f.write(json.dumps({"completion": completion, "value": value}) + "\\n")
    return value
'''




def rl_experiment(experiment, steps: int, rewards: list, tracking: dict | None = None, **rl):
    """experiment.yaml of tokenizer -> rl (grpo, 8 samples) on a depth-1 model with the local digits.py reward;
    prompts are 45-87 tokens. `rl` overrides the rl entry (e.g. save_every=3)."""
    return experiment(
        {"tokenizer": TOKENIZER,
         "rl": {**RL, "task": task(200), "algorithm": {"name": "grpo"}, "rewards": rewards, "optimizer": adamw(0.02),
                "rollout": {"samples": 8, "temperature": 1.0, "top_k": 0, "max_new_tokens": 8}, "steps": steps,
                "examples_per_step": 4, "device_batch_size": 16, "init_lr_frac": 1.0, **rl}},
        comment="tokenizer -> rl on a depth-1 model with a local reward plugin (tests)",
        name="rl-tiny", plugins=["./digits.py"], tracking=tracking or {"enabled": False})


def digit_share(text: str) -> float:
    return sum(c in "0123456789" for c in text) / max(1, len(text))


def printed_rewards(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"^\[rl\] step +\d+/\d+ \| reward (-?[\d.]+)", output, re.M)]


def test_rl_raises_the_mean_reward(write_file, experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_file("digits.py", REWARD_PLUGIN)
    path = rl_experiment(experiment, 16, [{"name": "digits"}])
    cfg, plugins = pipeline.prepare(path, [], [])
    pipeline.run(cfg, plugins)
    out = capsys.readouterr().out

    rewards = printed_rewards(out)
    assert len(rewards) == 16, out
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    # a random model writes ~3% digits; 16 steps of grpo must make digits a large share
    assert first < 0.15, rewards
    assert last > first + 0.3 and last > 3 * first, rewards
    assert "[rl] new gpt model:" in out and "[rl] eval at step 16:" in out
    found = latest_checkpoint(tmp_path / "runs/rl-tiny/rl")
    assert found is not None and json.loads((found / "meta.json").read_text())["done"] is True


def test_rl_resumes_after_a_crash_to_the_same_weights(write_file, experiment, tmp_path, monkeypatch, capsys):
    """Rollout seeds per (step, prompt, sample), optimizer state and RNG come back: bit-identical weights."""
    monkeypatch.chdir(tmp_path)
    write_file("digits.py", REWARD_PLUGIN)
    path = rl_experiment(experiment, 6, [{"name": "digits"}], save_every=3)
    pipeline.run(*pipeline.prepare(path, [], []))
    final = tmp_path / "runs/rl-tiny/rl/step_000006"
    unbroken, _, _ = load_checkpoint(final)
    rewards = printed_rewards(capsys.readouterr().out)
    shutil.rmtree(final)  # as if the process died after saving step 3
    pipeline.run(*pipeline.prepare(path, [], []), resume=True)
    out = capsys.readouterr().out
    assert "[rl] resuming at step 3" in out
    assert printed_rewards(out) == rewards[3:]  # the same rollouts
    resumed, _, _ = load_checkpoint(final)
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def _aim_metrics(root) -> tuple[dict, dict]:
    """({(name, context as sorted items): (steps, values)}, hparams) of the one run in the Aim repo under root."""
    import aim

    repo = aim.Repo.from_path(str(root))
    hashes = list(repo.list_all_runs())
    assert len(hashes) == 1, hashes
    run = aim.Run(run_hash=hashes[0], repo=repo, read_only=True)  # reads the index: rlkit indexes a run it closes
    metrics = {}
    for m in run.metrics():
        steps, (values,) = m.data.view("val").items_list()
        metrics[m.name, tuple(sorted(m.context.to_dict().items()))] = (list(steps), list(values))
    return metrics, run.get("hparams")  # no run.close(): aim 3.29's close() fails on a read-only run


def test_a_local_reward_plugin_is_used_and_tracked_in_aim(cli, write_file, experiment, tmp_path, monkeypatch):
    """tracking.repo is left at its default (.aim, in the folder rlkit runs in)."""
    monkeypatch.chdir(tmp_path)
    write_file("digits.py", REWARD_PLUGIN)
    log = tmp_path / "scores.jsonl"
    steps, rows = 4, 4 * 8  # examples_per_step x samples
    path = rl_experiment(experiment, steps, [{"name": "digits", "weight": 2.0, "args": {"log": str(log)}}],
                         tracking={"repo": ".aim"})
    result = cli("run", path, "stages.rl.log_every=3")
    assert result.exit_code == 0, result.output + result.stderr

    # the plugin saw every completion of every step, and its values are what the text says
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # first rl's check tried it on the task's first reference reply: before the run, and once the tokenizer was known
    trials, calls = calls[:2], calls[2:]
    assert trials[0] == trials[1] and "####" in trials[0]["completion"]
    assert len(calls) == steps * rows
    for call in calls:
        assert call["value"] == pytest.approx(digit_share(call["completion"]), abs=1e-12)
    means = [sum(c["value"] for c in calls[s * rows:(s + 1) * rows]) / rows for s in range(steps)]

    metrics, hparams = _aim_metrics(tmp_path)
    rl = (("stage", "rl"),)
    got_steps, per_reward = metrics["reward/digits", rl]
    assert got_steps == [1, 2, 3, 4]
    assert per_reward == pytest.approx(means, abs=1e-6)
    _, total = metrics["reward", rl]
    assert total == pytest.approx([2.0 * m for m in means], abs=1e-6)  # weight 2.0
    # printed with 3 decimals, every 3 steps and at the last, as the mean of the steps since the line before
    assert "| reward " + f"{sum(total[:3]) / 3:.3f} (3-step mean) |" in result.stdout
    assert printed_rewards(result.stdout) == pytest.approx([sum(total[:3]) / 3, total[3]], abs=6e-4)
    assert hparams["stages"]["rl"]["rewards"][0]["name"] == "digits"


# --------------------------------------------------------------------------- stage checks without a run

def test_a_reward_that_returns_no_number_is_named():
    def broken(completion, example):
        return None
    example = {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "#### 4"}
    with pytest.raises(RlkitError, match=r"reward 'broken' at rl step 3 on example 'What is 2 \+ 2\?': returned None"):
        score([("broken", 1.0, broken)], ["4"], [example], "at rl step 3")
    assert torch.equal(score([("ok", 1.0, lambda c, e: 1)], ["x"], [example], "at rl step 1")["ok"], torch.tensor([1.0]))


@pytest.mark.parametrize("reward, said", [
    (lambda c, e: float("nan"), "returned nan"),
    (lambda c, e: float("inf"), "returned inf"),
    (lambda c, e: "1.0", "returned '1.0'"),
    (lambda c, e: 1 / 0, "raised ZeroDivisionError: division by zero"),
])
def test_a_faulty_reward_is_named_with_what_it_did(reward, said):
    example = {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "#### 4"}
    with pytest.raises(RlkitError, match=rf"reward 'bad' at rl step 1 on example 'What is 2 \+ 2\?': {said}"):
        score([("bad", 1.0, reward)], ["4"], [example], "at rl step 1")


def test_a_reward_that_hangs_is_stopped_after_its_time_limit():
    import time

    example = {"messages": [{"role": "user", "content": "Q"}], "answer": "#### 4"}
    start = time.perf_counter()
    with pytest.raises(RlkitError, match=r"reward 'slow' .* took longer than 0.2s \(stages.rl.reward_timeout\)"):
        score([("slow", 1.0, lambda c, e: time.sleep(30))], ["4"], [example], "at rl step 1", timeout=0.2,
              timeout_key="stages.rl.reward_timeout")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("overrides, world, where", [
    (["stages.rl.rollout.samples=1"], 1, "stages.rl.rollout.samples: algorithm 'grpo' needs at least 2"),
    (["stages.rl.examples_per_step=3"], 2, "stages.rl.examples_per_step: 3"),
    (["stages.rl.algorithm.name=reinforce", "stages.rl.algorithm.args={baseline: mean}"], 1, "baseline 'mean'"),
])
def test_rl_settings_that_cannot_work_fail_before_any_model(overrides, world, where, write_file, experiment):
    """grpo compares samples within a group; prompts must split over the processes; algorithm args are
    checked by building the algorithm (cheap) in prepare."""
    write_file("digits.py", REWARD_PLUGIN)
    path = rl_experiment(experiment, 4, [{"name": "digits"}])
    with pytest.raises(RlkitError, match=re.escape(where)):
        pipeline.prepare(path, overrides, [], world_size=world)
    pipeline.prepare(path, [], [], world_size=world)  # the file itself is fine


@pytest.mark.parametrize("value, said", [(10 ** 400, "returned an integer too large for a float"),
                                         (1e300, r"returned 1e\+300, beyond float32's range")])
def test_a_reward_too_large_for_a_float_is_blamed_on_the_reward(value, said):
    example = {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "#### 4"}
    with pytest.raises(RlkitError, match=rf"^reward 'huge' at rl step 1 on example 'What is 2 \+ 2\?': {said}"):
        score([("huge", 1.0, lambda c, e: value)], ["4"], [example], "at rl step 1")


def test_a_weighted_total_that_overflows_names_the_rewards():
    from rlkit.lib.evaluation.scoring import weighted_total

    scores = {"big": torch.tensor([3e38]), "bigger": torch.tensor([3e38])}
    rewards = [("big", 1.0, None), ("bigger", 1.0, None)]
    with pytest.raises(RlkitError, match=r"rewards at rl step 1: their weighted sum overflows float32 \(big \(x1, "):
        weighted_total(rewards, scores, "at rl step 1")
    torch.testing.assert_close(weighted_total([("big", 0.5, None)], scores, "at rl step 1"), torch.tensor([1.5e38]))
