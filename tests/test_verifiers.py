"""A verifiers v1 Taskset's tasks as an rlkit task and its Task.score(trace) as the reward, offline (the real
package: `pip install -e '.[envs]'`), on the small taskset in tests/vf_addition.py."""
import re

import pytest

pytest.importorskip("verifiers.v1", reason="verifiers is not installed: pip install -e '.[envs]'")

from experiments import RL, TOKENIZER, adamw  # noqa: E402


@pytest.fixture(scope="module")
def plugins():
    from rlkit.core.plugins import load_plugins

    return load_plugins().tables


def test_the_taskset_splits_into_disjoint_train_and_test(plugins):
    make = plugins["task"]["verifiers"]
    train, test = make("train", taskset="vf_addition"), make("test", taskset="vf_addition")
    keys = [{e["verifiers"]["data"]["prompt"] for e in split} for split in (train, test)]
    assert len(train) + len(test) == 60 and not keys[0] & keys[1]  # every task in exactly one split
    assert len(test) >= 1 and train.reward == "verifiers"
    again = make("train", taskset="vf_addition")
    assert [e["messages"] for e in again] == [e["messages"] for e in train]
    assert train[0]["messages"] == [{"role": "user", "content": train[0]["verifiers"]["data"]["prompt"]}]
    assert len(make("train", taskset="vf_addition", size=5)) == 5
    with pytest.raises(Exception, match="cannot load taskset 'vf_addition'.*count"):
        make("train", taskset="vf_addition", count="many")  # the taskset's own config refuses it


def test_the_reward_is_the_tasks_own_score(plugins):
    """The taskset's two signals by hand: correct (x1) and replied (x0.5)."""
    reward = plugins["reward"]["verifiers"]
    examples = list(plugins["task"]["verifiers"]("train", taskset="vf_addition", size=3))
    replies, expected = [], []
    for e in examples:
        total = e["verifiers"]["data"]["a"] + e["verifiers"]["data"]["b"]
        replies += [f"The sum is\n#### {total}", f"#### {total + 1}", ""]
        expected += [1.5, 0.5, 0.0]
    scored = reward.score_batch(replies, [e for e in examples for _ in range(3)])
    assert list(scored) == expected
    assert scored.metrics == {"correct": [1.0, 0.0, 0.0] * 3, "replied": [1.0, 1.0, 0.0] * 3}
    assert reward(replies[0], examples[0]) == 1.5


def test_a_verifiers_task_trains_and_evaluates_through_rlkit_run(cli, experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = {"name": "verifiers", "args": {"taskset": "vf_addition"}}
    path = experiment({"tokenizer": TOKENIZER,
                       "rl": {**RL, "task": task, "rewards": [{"name": "verifiers"}], "optimizer": adamw(0.02),
                              "steps": 2, "eval": {"every": 0, "examples": 4, "k": 2}}}, name="vf")
    result = cli("run", path)
    assert result.exit_code == 0, result.output + result.stderr
    assert len(re.findall(r"^\[rl\] step +\d/2 \| reward", result.stdout, re.M)) == 2
    assert "[rl] eval at step 2: pass@1" in result.stdout
