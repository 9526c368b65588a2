"""Rewards are tried before any model is built: `rlkit check` calls each reward once on its task's first
example (the reference reply as the completion) and builds every task's rows, and `rlkit reward` scores one
string from the command line."""
import re

import pytest

from experiments import RL, TOKENIZER, task

BAD_REWARDS = '''
import rlkit


def needs_field(completion, example):
    return float(example["solution_steps"])  # a field the arithmetic task does not have


def not_a_number(completion, example):
    return float("nan")


def exact(completion, example):
    return 1.0 if completion == example["answer"] else 0.0


@rlkit.hookimpl
def rlkit_rewards():
    return {"needs_field": needs_field, "not_a_number": not_a_number, "exact": exact}
'''


@pytest.fixture
def rewards_file(write_file):
    return write_file("rewards.py", BAD_REWARDS)


@pytest.mark.parametrize("reward, said", [("needs_field", "raised KeyError: 'solution_steps'"),
                                          ("not_a_number", "returned nan; a reward must return a finite float")])
def test_check_calls_each_reward_and_a_faulty_one_is_one_line(cli, experiment, rewards_file, reward, said):
    path = experiment({"tokenizer": TOKENIZER, "rl": {**RL, "rewards": [{"name": "gsm8k"}, {"name": reward}]}})
    result = cli("check", path, "--plugin", rewards_file)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"stages.rl.rewards[1]: reward '{reward}'" in lines[0] and said in lines[0], lines[0]


def test_check_passes_a_correct_reward_and_builds_every_task(cli, experiment, rewards_file):
    good = experiment({"tokenizer": TOKENIZER, "rl": {**RL, "rewards": [{"name": "exact"}]}})
    assert cli("check", good, "--plugin", rewards_file).exit_code == 0
    empty = experiment({"tokenizer": TOKENIZER, "rl": {**RL, "task": task(size=0)}}, file="empty.yaml")
    result = cli("check", empty)
    assert result.exit_code == 1 and "stages.rl.task" in result.stderr, result.stderr


def test_reward_command_scores_a_string_against_the_tasks_first_example(cli, rewards_file):
    first = cli("reward", "gsm8k", "no answer here", "--arg", "operands=3")
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[0] == "gsm8k: 0"
    answer = re.search(r"#### (\d+)", first.stdout).group(1)  # the example's reference answer, as printed
    right = cli("reward", "gsm8k", f"so it is #### {answer}", "--arg", "operands=3")
    assert right.stdout.splitlines()[0] == "gsm8k: 1"


def test_reward_command_errors_are_one_line(cli, rewards_file):
    crash = cli("reward", "needs_field", "x", "--plugin", rewards_file)
    assert crash.exit_code == 1
    assert crash.stderr.strip().splitlines() == [
        "error: reward: reward 'needs_field' on 'x': raised KeyError: 'solution_steps'"]
    missing = cli("reward", "nope", "x")
    assert missing.exit_code == 1 and "no reward plugin named 'nope'" in missing.stderr
    assert "gsm8k" in missing.stderr  # what would be valid
