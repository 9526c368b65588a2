"""The reasoning_gym_curriculum task (rlkit/plugins/tasks/reasoninggym_curriculum.py) and the rl stage's hook
for a task that adapts (Task.observe, state_dict, load_state_dict): the level rises with the step's reward,
is tracked, and a resumed run draws what the unbroken run drew (the real reasoning-gym package)."""
import json
import shutil

import pytest
import torch

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed: pip install -e '.[envs]'")

from rlkit.core import pipeline  # noqa: E402
from rlkit.core.checkpoint import load_checkpoint  # noqa: E402

from experiments import RL, TOKENIZER, adamw  # noqa: E402

ARGS = {"name": "basic_arithmetic", "size": 30}

REWARDS = '''\
"""Two rewards for the test: digits (learnable by a fresh model, so every step updates the weights) and
the reasoning_gym reward's value, logged with the question it scored (weight 0)."""
import json

import rlkit
from rlkit.plugins.rewards.reasoninggym import reasoning_gym


@rlkit.hookimpl
def rlkit_rewards():
    return {"digits": digits, "logged": logged}


def digits(completion, example):
    return sum(c in "0123456789" for c in completion) / max(1, len(completion))


def logged(completion, example, log):
    value = reasoning_gym(completion, example)
    with open(log, "a") as f:
        f.write(json.dumps({"question": example["messages"][0]["content"], "value": value}) + "\\n")
    return value
'''


@pytest.fixture(scope="module")
def curriculum():
    from rlkit.core.plugins import load_plugins

    return load_plugins().tables["task"]["reasoning_gym_curriculum"]


def questions(examples) -> set[str]:
    return {e["messages"][0]["content"] for e in examples}


def test_the_level_rises_after_patience_steps_at_the_threshold(curriculum):
    task = curriculum("train", threshold=0.5, patience=2, max_level=2, **ARGS)
    levels = [questions(task)]
    seen = []
    for step, reward in enumerate([0.6, 0.4, 0.6, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9], start=1):
        tracked = task.observe(step, {"reward": reward, "loss": 0.1})
        assert tracked["curriculum/metric"] == reward
        seen.append(int(tracked["curriculum/level"]))
        if questions(task) not in levels:
            levels.append(questions(task))
    # by hand: a streak of 2 at >= 0.5 moves up after steps 4 and 6; level 2 is the cap
    assert seen == [0, 0, 0, 0, 1, 1, 2, 2, 2] and task.state_dict() == {"level": 2, "streak": 3}
    assert len(levels) == 3 and not levels[0] & levels[2]  # each level its own problems
    terms = [max(e["reasoning_gym"]["entry"]["metadata"]["num_terms"] for e in task.cache[lv]) for lv in range(3)]
    assert terms == [2, 3, 4]  # reasoning-gym's curriculum: 2 + level terms at most
    again = curriculum("train", threshold=0.5, patience=2, max_level=2, **ARGS)
    again.load_state_dict(task.state_dict())
    assert list(again) == list(task)  # the state is all it takes to draw the same problems
    test = curriculum("test", max_level=2, size=30, name="basic_arithmetic")
    assert not questions(test) & set().union(*levels)  # held out at every level
    assert {e["reasoning_gym"]["entry"]["metadata"]["num_terms"] <= 4 for e in test} == {True}
    with pytest.raises(Exception, match="metric 'accuracy' is not among the step's figures"):
        curriculum("train", metric="accuracy", **ARGS).observe(1, {"reward": 1.0})


def _aim_metric(root, name: str) -> list[float]:
    import aim

    repo = aim.Repo.from_path(str(root))
    (run_hash,) = list(repo.list_all_runs())
    run = aim.Run(run_hash=run_hash, repo=repo, read_only=True)
    (metric,) = [m for m in run.metrics() if m.name == name]
    return list(metric.data.view("val").items_list()[1][0])


def test_the_level_is_tracked_and_a_resumed_run_draws_what_the_unbroken_run_drew(cli, write_file, experiment, tmp_path,
                                                                                 monkeypatch, capsys, curriculum):
    """threshold 0: every step passes, so with patience 2 the level rises after steps 2 and 4; the run is cut
    after its step-3 checkpoint (level 1, streak 1) and resumed."""
    monkeypatch.chdir(tmp_path)
    write_file("rewards.py", REWARDS)
    log = tmp_path / "scored.jsonl"
    task = {"name": "reasoning_gym_curriculum", "args": {**ARGS, "threshold": 0.0, "patience": 2}}
    path = experiment(
        {"tokenizer": TOKENIZER,
         "rl": {**RL, "task": task, "optimizer": adamw(0.02), "steps": 6, "examples_per_step": 2, "save_every": 3,
                "rollout": {"samples": 4, "temperature": 1.0, "top_k": 0, "max_new_tokens": 8},
                "rewards": [{"name": "digits"}, {"name": "logged", "weight": 0.0, "args": {"log": str(log)}}]}},
        name="cur", plugins=["./rewards.py"], tracking={"repo": ".aim"})
    result = cli("run", path)  # rlkit run: tracked in Aim
    assert result.exit_code == 0, result.output + result.stderr
    assert _aim_metric(tmp_path, "curriculum/level") == [0, 0, 1, 1, 2, 2]
    final = tmp_path / "runs/cur/rl/step_000006"
    unbroken, _, meta = load_checkpoint(final)
    assert meta["task"] == {"level": 3, "streak": 0}
    assert load_checkpoint(tmp_path / "runs/cur/rl/step_000003")[2]["task"] == {"level": 1, "streak": 1}
    drawn = [json.loads(line)["question"] for line in log.read_text().splitlines()][2:]  # after check's trials
    per_step = [drawn[i:i + 8] for i in range(0, len(drawn), 8)]  # 2 prompts x 4 samples a step
    train = curriculum("train", **ARGS)
    for step, level in enumerate([0, 0, 1, 1, 2, 2]):
        train.load_state_dict({"level": level, "streak": 0})
        assert set(per_step[step]) <= questions(train), step

    shutil.rmtree(final)  # as if the process died after saving step 3
    log.write_text("")
    pipeline.run(*pipeline.prepare(path, [], []), resume=True)
    assert "[rl] resuming at step 3" in capsys.readouterr().out
    again = [json.loads(line)["question"] for line in log.read_text().splitlines()][2:]  # after check's trials
    assert again == drawn[3 * 8:]  # steps 4-6: the same problems, from the restored level
    resumed, _, meta = load_checkpoint(final)
    assert meta["task"] == {"level": 3, "streak": 0}
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)
