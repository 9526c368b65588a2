"""Episodes in the rl stage and in evaluation, through `rlkit run` and `rlkit eval` (tests/envs_plugins.py).

A depth-1 model is taught to answer "1" (a tokenizer and 15 sft steps, once per module); the rl entries start
from it with `init:` and run the `again` env: three turns an episode, the user saying "again" between them.
"""
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from envs_plugins import PLUGIN
from experiments import EVAL, RL, SFT, TOKENIZER, adamw, data, experiment_text, without

SAMPLED = {"samples": 4, "max_new_tokens": 24, "max_turns": 3, "temperature": 1.0, "top_k": 0}
ENV = {"name": "again", "args": {"log": "episodes.jsonl"}}


def rl_entry(base: Path, **over) -> dict:
    return {**without(RL, "rewards"), "init": str(base), "task": {"name": "say1"}, "env": ENV,
            "algorithm": {"name": "logged_grpo"}, "rollout": SAMPLED, "steps": 3, "examples_per_step": 4,
            "init_lr_frac": 1.0, "eval": {"every": 0, "examples": 4, "k": 2}, **over}


def write(folder: Path, stages: dict, **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugs.py").write_text(PLUGIN)
    (folder / "exp.yaml").write_text(experiment_text(stages, name="e", plugins=["./plugs.py"], **top))
    return folder


def run(folder: Path, *args):
    from rlkit.core import pipeline

    cfg, plugins = pipeline.prepare(folder / "exp.yaml", [f"run_dir={folder / 'runs/e'}", *args], [])
    pipeline.run(cfg, plugins)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The sft checkpoint folder of a model that answers "1" and stops."""
    folder = write(tmp_path_factory.mktemp("base"), {
        "tokenizer": {**TOKENIZER, "vocab_size": 300, "data": data(200)},
        "sft": {**SFT, "task": {"name": "say1"}, "steps": 15, "optimizer": adamw(0.02), "init_lr_frac": 1.0}})
    run(folder)
    return folder / "runs/e/sft"


def env_groups(log: Path) -> list[list[float]]:
    """The rl steps' episodes as the env saw them: each episode's reward (its last line), grouped by reset seed (one
    seed a group), each group sorted; eval episodes (test questions, 'case 1000' on) left out."""
    final = {}
    for line in log.read_text().splitlines():
        episode = json.loads(line)
        if int(episode["question"].split()[-1]) < 1000:
            final[episode["episode"], episode["seed"]] = episode["reward"]
    groups = defaultdict(list)
    for (_, seed), reward in final.items():
        groups[seed].append(reward)
    return sorted(sorted(group) for seed, group in groups.items() if seed != 0)  # seed 0: rlkit check's trial


def test_episode_rewards_reach_the_algorithm_as_groups(base, tmp_path, monkeypatch, cli):
    folder = write(tmp_path, {"rl": rl_entry(base)}, tracking={"repo": ".aim"})
    monkeypatch.chdir(folder)
    result = cli("run", "exp.yaml")
    assert result.exit_code == 0, result.output
    steps = [r for r in map(json.loads, (folder / "rewards.jsonl").read_text().splitlines()) if len(r) == 4]
    assert len(steps) == 3 and all(len(group) == 4 for rewards in steps for group in rewards)  # (P, G) a step
    logged = sorted(sorted(group) for rewards in steps for group in rewards)
    assert logged == env_groups(folder / "episodes.jsonl") and len(logged) == 12
    assert any(len(set(group)) > 1 for group in logged)  # some group has an advantage to learn from
    summary = json.loads((folder / "runs/e/summary.json").read_text())["stages"]["rl"]
    assert summary["eval_after"]["turns"] > 1  # the held-out eval ran episodes too
    report = (folder / "runs/e/report.md").read_text()
    assert re.search(r"episodes: turns [\d.]+ -> [\d.]+, length", report)
