"""reasoning-gym's generators as an rlkit task and its score_answer as a reward (the real package:
`pip install -e '.[envs]'`): seeded, disjoint splits, and a run through `rlkit run` with no network."""
import json
import re

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed: pip install -e '.[envs]'")

from experiments import RL, TOKENIZER, adamw  # noqa: E402

# one-digit sums of two terms: a small space (a few thousand questions), where two splits drawn from it would
# share problems by chance (without the hash partition)
SMALL = {"name": "basic_arithmetic", "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}

LOGGED = '''\
"""The reasoning_gym reward, logging what it scored (the test's window on the run)."""
import json

import rlkit
from rlkit.plugins.rewards.reasoninggym import reasoning_gym


@rlkit.hookimpl
def rlkit_rewards():
    return {"logged": logged}


def logged(completion, example, log):
    value = reasoning_gym(completion, example)
    with open(log, "a") as f:
        f.write(json.dumps({"question": example["messages"][0]["content"], "value": value}) + "\\n")
    return value
'''


@pytest.fixture(scope="module")
def plugins():
    from rlkit.core.plugins import load_plugins

    return load_plugins().tables


def questions(task) -> list[str]:
    return [example["messages"][0]["content"] for example in task]


def test_the_same_seed_gives_the_same_problems_and_the_splits_share_none(plugins):
    make = plugins["task"]["reasoning_gym"]
    train, again = make("train", size=400, **SMALL), make("train", size=400, **SMALL)
    assert [e["answer"] for e in train] == [e["answer"] for e in again] and questions(train) == questions(again)
    other = make("train", size=400, seed=1, **SMALL)
    assert questions(other) != questions(train)
    test = make("test", size=150, **SMALL)
    assert len(set(questions(test))) == 150  # distinct
    for split in (train, other, make("train", size=400, seed=2, **SMALL)):
        assert not set(questions(split)) & set(questions(test))
    assert test.reward == "reasoning_gym" and train[0]["answer"].startswith("#### ")


def test_the_reward_is_score_answer_on_the_extracted_answer(plugins):
    import reasoning_gym

    reward = plugins["reward"]["reasoning_gym"]
    example = plugins["task"]["reasoning_gym"]("train", name="leg_counting", size=1)[0]
    right = example["reasoning_gym"]["entry"]["answer"]
    dataset = reasoning_gym.create_dataset("leg_counting")
    assert dataset.score_answer(right, example["reasoning_gym"]["entry"]) == 1.0
    assert reward(f"Each has 4 legs.\n#### {right}", example) == 1.0
    assert reward(f"#### 1\nNo, #### {right}", example) == 1.0  # the last '####'
    assert reward(f"<answer>{right}</answer>", example) == 1.0  # no '####': the last <answer> tag
    assert reward(f"the answer is {right}", example) == 0.0  # no answer given
    assert reward(f"#### {int(right) + 1}", example) == 0.0


def test_a_mistake_in_the_generator_or_its_config_is_one_line(experiment, cli):
    path = experiment({"rl": {**RL, "task": {"name": "reasoning_gym", "args": {"name": "basic_arithmetic", "min_term": 2}},
                              "rewards": [{"name": "reasoning_gym"}]}})
    result = cli("check", path)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: stages.rl.task: reasoning_gym: generator 'basic_arithmetic' has no config min_term; it "
        "takes: min_terms, max_terms, min_digits, max_digits, operators, allow_parentheses, allow_negation, "
        "format_style, whitespace"]


def test_a_reasoning_gym_task_trains_and_evaluates_through_rlkit_run(cli, write_file, experiment, tmp_path,
                                                                     monkeypatch):
    """tokenizer -> rl (2 steps) -> eval on a fresh depth-1 model: the rollouts' prompts come from the train
    split, the held-out ones from the test split, and every completion is scored by score_answer."""
    monkeypatch.chdir(tmp_path)
    write_file("logged.py", LOGGED)
    task = {"name": "reasoning_gym", "args": {**SMALL, "size": 40}}
    rl_log, eval_log = tmp_path / "rl.jsonl", tmp_path / "eval.jsonl"
    path = experiment(
        {"tokenizer": TOKENIZER,
         "rl": {**RL, "task": task, "optimizer": adamw(0.02), "steps": 2, "examples_per_step": 2,
                "rewards": [{"name": "reasoning_gym"}, {"name": "logged", "weight": 0.0, "args": {"log": str(rl_log)}}],
                "eval": {"every": 0, "examples": 4, "k": 2}},
         "eval_rg": {"kind": "eval", "examples": 5, "tasks": [{**task, "max_new_tokens": 8, "reward": "logged",
                                                               "reward_args": {"log": str(eval_log)}}]}},
        name="rg", plugins=["./logged.py"])
    result = cli("run", path)
    assert result.exit_code == 0, result.output + result.stderr

    from rlkit.plugins.tasks.reasoninggym import reasoning_gym

    train, test = set(questions(reasoning_gym("train", **SMALL, size=40))), set(questions(reasoning_gym("test", **SMALL)))
    rows = [json.loads(line) for line in rl_log.read_text().splitlines()]
    trials, rows = rows[:2], rows[2:]  # rlkit check's trial of each reward, before the run and with the tokenizer
    assert all(t["value"] == 1.0 for t in trials)  # the reference reply "#### <answer>" scores 1
    assert len(rows) == 2 * 2 * 2 and {r["question"] for r in rows} <= train  # steps x prompts x samples
    steps = re.findall(r"^\[rl\] step +\d+/2 \| reward ([\d.]+)", result.stdout, re.M)
    assert [float(s) for s in steps] == pytest.approx([sum(r["value"] for r in rows[i:i + 4]) / 4 for i in (0, 4)],
                                                      abs=6e-4)
    held_out = [json.loads(line) for line in eval_log.read_text().splitlines()][2:]  # after the check's two trials
    assert len(held_out) == 5 and {r["question"] for r in held_out} <= test
    assert "reasoning-gym basic_arithmetic" in result.stdout  # the eval entry's row


def test_the_example_experiment_checks(cli):
    """experiments/reasoning_gym.yaml (the curriculum demo) resolves: its tasks' rows, its rewards on them."""
    from pathlib import Path

    result = cli("check", Path(__file__).resolve().parents[1] / "experiments/reasoning_gym.yaml")
    assert result.exit_code == 0, result.output + result.stderr
