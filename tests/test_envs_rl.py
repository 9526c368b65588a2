"""Episodes in the rl stage and in evaluation, through `rlkit run` and `rlkit eval` (tests/envs_plugins.py).

A depth-1 model is taught to answer "1" (a tokenizer and 15 sft steps, once per module); the rl entries start
from it with `init:` and run the `again` env: three turns an episode, the user saying "again" between them.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint

from envs_plugins import OPENENV, PLUGIN
from experiments import RL, SFT, TOKENIZER, adamw, data, experiment_text, without

SAMPLED = {"samples": 4, "max_new_tokens": 24, "max_turns": 3, "temperature": 1.0, "top_k": 0}
ENV = {"name": "again", "args": {"log": "episodes.jsonl"}}
MODEL = {"depth": 1, "seq_len": 512, "dtype": "float32"}  # room for a textarena game's prompt and a reply


def rl_entry(base: Path, **over) -> dict:
    return {**without(RL, "rewards"), "init": str(base), "task": {"name": "say1"}, "env": ENV,
            "algorithm": {"name": "logged_grpo"}, "rollout": SAMPLED, "steps": 3, "examples_per_step": 4,
            "init_lr_frac": 1.0, "eval": {"every": 0, "examples": 4, "k": 2}, **over}


def write(folder: Path, stages: dict, **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugs.py").write_text(PLUGIN)
    (folder / "say.py").write_text(OPENENV)
    (folder / "exp.yaml").write_text(experiment_text(stages, name="e", plugins=["./plugs.py", "./say.py"],
                                                     model=MODEL, **top))
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
    eval_rl = {"kind": "eval", "examples": 4, "tasks": [{"name": "say1", "env": {"name": "again", "args": {"turns": 2}},
                                                          "max_turns": 2, "max_new_tokens": 24}]}
    folder = write(tmp_path, {"rl": rl_entry(base), "eval_rl": eval_rl}, tracking={"repo": ".aim"})
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
    # the eval entry: greedy episodes of two turns; `rlkit eval` repeats the rl entry's final eval
    figures = json.loads((folder / "runs/e/summary.json").read_text())["stages"]["eval_rl"]["evals"]["say1"]
    assert figures["accuracy"] == 1.0 and figures["turns"] == 2.0 and figures["reward"] == 2.0
    result = cli("eval", "runs/e/rl", "--task", "say1", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout[result.stdout.index("["):])
    assert row["settings"]["env"] == ENV and row["figures"]["turns"] == summary["eval_after"]["turns"]
    assert row["figures"]["pass@1"] == summary["eval_after"]["pass@1"]


def test_rlkit_eval_runs_any_checkpoint_in_an_env_from_the_command_line(base, monkeypatch, cli):
    """`rlkit eval CKPT --task T --env NAME --max-turns N`: episodes for a checkpoint whose run had no env (the
    sft one); an unknown env is one line naming --env."""
    monkeypatch.chdir(base.parents[2])
    result = cli("eval", str(base), "--task", "say1", "--env", "again", "--max-turns", "2", "--examples", "3", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout[result.stdout.index("["):])
    assert row["settings"]["env"] == {"name": "again", "args": {}} and row["figures"]["turns"] == 2.0
    assert row["figures"]["accuracy"] == 1.0  # the model answers "1" each turn, as the env asks
    result = cli("eval", str(base), "--task", "say1", "--env", "nope")
    assert result.exit_code != 0 and "--env" in result.output and "nope" in result.output
    assert "Traceback" not in result.output


# --- adapters: an OpenEnv-protocol environment, a textarena game ---------------------------------------------

def run_env(base: Path, folder: Path, env: dict, rollout: dict, cli) -> dict:
    """rl (2 steps) and an eval entry on `env`; the summary's rl and eval_rl sections."""
    rollout = {**SAMPLED, **rollout}
    entry = rl_entry(base, env=env, algorithm={"name": "grpo"}, rollout=rollout, steps=2)
    eval_rl = {"kind": "eval", "examples": 2, "tasks": [{"name": "say1", "env": env, "max_turns": rollout["max_turns"],
                                                          "max_new_tokens": rollout["max_new_tokens"]}]}
    write(folder, {"rl": entry, "eval_rl": eval_rl}, tracking={"repo": ".aim"})
    os.chdir(folder)
    result = cli("run", "exp.yaml")
    assert result.exit_code == 0, result.output
    return json.loads((folder / "runs/e/summary.json").read_text())["stages"]


def test_an_openenv_protocol_environment_runs_episodes_in_rl_and_eval(base, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    stages = run_env(base, tmp_path, {"name": "say", "args": {"rounds": 2}}, {"max_turns": 3}, cli)
    assert stages["rl"]["eval_after"]["turns"] == 2.0  # the env's done, before max_turns
    assert stages["eval_rl"]["evals"]["say1"] == {"accuracy": 1.0, "reward": 2.0, "turns": 2.0}


def test_a_textarena_game_runs_episodes_in_rl_and_eval(base, tmp_path, monkeypatch, cli):
    pytest.importorskip("textarena", reason="textarena (the [envs] extra) is not installed: pip install 'rlkit[envs]'")
    monkeypatch.chdir(tmp_path)
    env = {"name": "textarena", "args": {"game": "TowerOfHanoi-v0"}}
    stages = run_env(base, tmp_path, env, {"max_turns": 2, "max_new_tokens": 200}, cli)
    # "1" is no move: the game says so and asks again, twice; it gives no reward before it ends
    assert stages["eval_rl"]["evals"]["say1"] == {"accuracy": 0.0, "reward": 0.0, "turns": 2.0}
    assert stages["rl"]["eval_after"]["turns"] > 1


# --- processes: kill -9 in the middle of an rl step, then --resume; two ranks ---------------------------------

def rlkit(folder: Path, *args, **cues) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **cues}
    return subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


def weights(stage_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(stage_dir))[0]


@pytest.mark.slow
def test_killed_inside_an_episode_then_resumed_equals_a_straight_run(base, tmp_path):
    """SIGKILL while an env's step of rl step 3 runs (checkpoint 2 saved), --resume: the weights of a run never
    stopped, bit for bit, and the same rewards from step 3 on."""
    entry = rl_entry(base, steps=4, save_every=2)
    straight = write(tmp_path / "straight", {"rl": entry})
    done = rlkit(straight, "run", "exp.yaml")
    assert done.returncode == 0, done.stdout + done.stderr

    folder, marker = write(tmp_path / "killed", {"rl": entry}), tmp_path / "held"
    cues = {"RLKIT_TEST_BLOCK": "group:9", "RLKIT_TEST_MARKER": str(marker)}  # 4 groups a step: inside step 3
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", "run", "exp.yaml"], cwd=folder, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **cues}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert latest_checkpoint(folder / "runs/e/rl").name == "step_000002"

    resumed = rlkit(folder, "run", "exp.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "[rl] resuming at step 2" in resumed.stdout
    a, b = weights(folder / "runs/e/rl"), weights(straight / "runs/e/rl")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert rewards(resumed.stdout) == rewards(done.stdout)[2:]


def rewards(stdout: str) -> list[float]:
    return [float(r) for r in re.findall(r"\[rl\] step +\d+/\d+ \| reward (-?[\d.]+)", stdout)]


@pytest.mark.slow
def test_two_ranks_run_the_same_episodes_as_one(base, tmp_path):
    """--nproc-per-node 2: each rank runs half of a step's groups; the algorithm sees the same (P, G) rewards, the
    steps the same mean reward, the held-out eval the same figures."""
    outs = {}
    for n in (1, 2):
        folder = write(tmp_path / f"n{n}", {"rl": rl_entry(base)})
        result = rlkit(folder, "run", "exp.yaml", "--nproc-per-node", str(n))
        assert result.returncode == 0 and f"world size {n}" in result.stdout, result.stdout + result.stderr
        logged = [r for r in map(json.loads, (folder / "rewards.jsonl").read_text().splitlines()) if len(r) == 4]
        evals = re.findall(r"eval at step \d+: (.*)", result.stdout)
        outs[n] = (logged, rewards(result.stdout), evals, env_groups(folder / "episodes.jsonl"))
    assert len(outs[1][0]) == 3 and len(outs[1][1]) == 3 and len(outs[1][2]) == 2
    assert outs[2] == outs[1]
