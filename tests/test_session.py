"""The training session (rlkit/core/session.py) and the narrow stage contract, through real plugin files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkit.core.config import PluginRef
from rlkit.core.dist import DistInfo
from rlkit.core.errors import RlkitError
from rlkit.core.plugins import load_plugins
from rlkit.core.runtime import Runtime
from rlkit.core.track import Tracker
from rlkit.lib.evaluation.evaltask import task_reward
from rlkit.lib.text.task import Task, make_example
from rlkit.lib.training.optim import lr_multiplier, lr_schedule
from rlkit.plugins.stages import rl, sft

# a stage that draws from torch's global generator every step (as dropout or sampling would) and keeps
# what it drew in its checkpoints; STOP_AT=n sends itself Ctrl-C at step n (the session saves and stops)
DRAWS = '''\
import json, os, signal
from dataclasses import dataclass

import torch

import rlkit
from rlkit.core.config import PluginRef, plugin
from rlkit.core.context import StageContext
from rlkit.core.handoff import Checkpoint
from rlkit.core.stage import Stage


@dataclass
class DrawsConfig:
    steps: int = 4
    save_every: int = 0
    optimizer: PluginRef = plugin("optimizer", "adamw")


def run(ctx: StageContext[DrawsConfig], start: Checkpoint | None) -> Checkpoint:
    session = ctx.session(start, ctx.cfg.optimizer)
    session.begin()
    drawn = session.extra.get("drawn", [])
    for step in range(session.start_step, ctx.cfg.steps):
        drawn.append(torch.rand(()).item())
        if os.environ.get("STOP_AT") == str(step + 1):
            os.kill(os.getpid(), signal.SIGINT)
        session.end_step(step + 1, {"drawn": drawn})
    print("drawn", json.dumps(drawn))
    return session.save(ctx.cfg.steps, {"drawn": drawn}, done=True)


@rlkit.hookimpl
def rlkit_stages():
    return {"draws": Stage(config=DrawsConfig, run=run)}
'''

# the same stage written against the pre-session context (load_model, optimizer, restore, ddp, save, ...)
DRAWS_BEFORE_SESSIONS = DRAWS[:DRAWS.index("def run(")] + '''\
def run(ctx, start):
    resume = ctx.resume_point()
    model, _ = ctx.load_model(resume or start)
    optimizer = ctx.optimizer(ctx.cfg.optimizer, model)
    resumed = ctx.restore(resume, optimizer)
    ctx.ddp(model)
    drawn = resumed.get("drawn", [])
    for step in range(resumed.get("step", 0), ctx.cfg.steps):
        drawn.append(torch.rand(()).item())
        if os.environ.get("STOP_AT") == str(step + 1):
            os.kill(os.getpid(), signal.SIGINT)
        ctx.stop_if_requested(step + 1, model, optimizer, {"drawn": drawn})
    print("drawn", json.dumps(drawn))
    return ctx.save(ctx.cfg.steps, model, optimizer, {"drawn": drawn}, done=True)


@rlkit.hookimpl
def rlkit_stages():
    return {"draws": Stage(config=DrawsConfig, run=run)}
'''

EXPERIMENT = """\
name: draws
seed: 0
device: cpu
plugins: [./draws.py]
model: {depth: 1, seq_len: 64, dtype: float32}
tracking: {enabled: false}
stages:
  tokenizer: {vocab_size: 300, max_chars: 20000, data: {source: arithmetic, args: {size: 200}}}
  draws: {kind: draws, steps: 5}
"""


def _rlkit(folder: Path, *args, stop_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STOP_AT": stop_at}
    return subprocess.run([sys.executable, "-m", "rlkit", "run", "exp.yaml", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def _drawn(stdout: str) -> list[float]:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("drawn "))[6:])


def _folder(path: Path, plugin: str) -> Path:
    path.mkdir(parents=True)
    (path / "draws.py").write_text(plugin)
    (path / "exp.yaml").write_text(EXPERIMENT)
    return path


@pytest.mark.parametrize("plugin", [DRAWS, DRAWS_BEFORE_SESSIONS], ids=["session", "before-sessions"])
def test_a_stopped_and_resumed_run_draws_the_same_random_numbers_as_a_straight_one(tmp_path, plugin):
    straight = _rlkit(_folder(tmp_path / "straight", plugin))
    assert straight.returncode == 0, straight.stdout + straight.stderr
    stopped = _folder(tmp_path / "stopped", plugin)
    first = _rlkit(stopped, stop_at="2")
    assert first.returncode != 0 and "stopped at draws step 2" in first.stdout + first.stderr
    again = _rlkit(stopped, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[draws] resuming at step 2" in again.stdout
    drawn = _drawn(straight.stdout)
    assert len(drawn) == 5 and len(set(drawn)) == 5
    assert _drawn(again.stdout) == drawn  # steps 3-5 drew what the straight run drew there


def test_lr_schedule_is_each_stages_former_spelling_bit_for_bit():
    pre = rlkit_cfg("pretrain", steps=40, warmup_steps=3, warmdown_frac=0.3, final_lr_frac=0.1)
    mid = rlkit_cfg("midtrain", steps=30, warmup_steps=2, warmdown_frac=0.5, init_lr_frac=0.7)
    ft = rlkit_cfg("sft", steps=150, init_lr_frac=0.1)
    rlc = rlkit_cfg("rl", steps=300, init_lr_frac=0.05)
    for step in range(300):
        assert lr_schedule(pre, step % 40) == lr_multiplier(step % 40, 40, 3, 0.3, 0.1)
        assert lr_schedule(mid, step % 30) == 0.7 * lr_multiplier(step % 30, 30, 2, 0.5, 0.0)
        assert lr_schedule(ft, step % 150) == 0.1 * lr_multiplier(step % 150, 150, 0, 1.0, 0.0)
        assert lr_schedule(rlc, step) == 0.05 * (1.0 - step / 300)


def rlkit_cfg(stage: str, **values):
    from rlkit.plugins.stages import midtrain, pretrain

    schema = {"pretrain": pretrain.PretrainConfig, "midtrain": midtrain.MidtrainConfig, "sft": sft.SFTConfig,
              "rl": rl.RLConfig}[stage]
    return schema(**values)


def test_sft_and_rl_evaluate_with_the_tasks_own_reward_unless_told_otherwise():
    humaneval = PluginRef(name="humaneval")
    (spec,) = sft.evals(sft.SFTConfig(task=humaneval))
    assert spec.reward is None
    (spec,) = rl.evals(rl.RLConfig(task=humaneval))
    assert spec.reward is None
    (told,) = rl.evals(rl.RLConfig(task=humaneval, eval=rl.RLEval(reward=PluginRef(name="gsm8k"))))
    assert told.reward == "gsm8k"
    rt = Runtime("rl", torch.device("cpu"), torch.float32, DistInfo(), Tracker(), load_plugins([]))
    task = Task([make_example("def f(): pass", "x")], reward="humaneval")
    assert task_reward(rt, task, spec, "stages.rl.eval.reward")[0] == "humaneval"
    assert task_reward(rt, task, told, "stages.rl.eval.reward")[0] == "gsm8k"
    with pytest.raises(RlkitError, match=r"^stages.sft.eval_reward: task 'humaneval' names no reward of its own"):
        task_reward(rt, Task([make_example("q", "a")]), spec, "stages.sft.eval_reward")


BOUNDED = '''\
from dataclasses import dataclass, field

import rlkit
from rlkit.core.config import bounded, one_of
from rlkit.core.stage import Stage


@dataclass
class Inner:
    rate: float = bounded(0.5, ge=0)


@dataclass
class TidyConfig:
    steps: int = bounded(3, ge=1)
    style: str = one_of("neat", ("neat", "loose"))
    inner: Inner = field(default_factory=Inner)


@rlkit.hookimpl
def rlkit_stages():
    return {"tidy": Stage(config=TidyConfig, run=lambda ctx, start: start)}
'''


@pytest.mark.parametrize("entry, line", [
    ("{steps: 0}", "stages.tidy.steps: 0 must be at least 1"),
    ("{inner: {rate: -0.1}}", "stages.tidy.inner.rate: -0.1 must not be negative"),
    ("{inner: {rate: .inf}}", "stages.tidy.inner.rate: inf is not a finite number; give one >= 0"),
    ("{style: messy}", "stages.tidy.style: 'messy' is not valid (valid: neat, loose)"),
])
def test_field_constraints_of_a_local_stage_fail_in_one_line_naming_file_and_key(tmp_path, entry, line):
    from rlkit.core import pipeline

    (tmp_path / "tidy.py").write_text(BOUNDED)
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: t\nplugins: [./tidy.py]\nstages:\n  tidy: {entry}\n")
    with pytest.raises(RlkitError) as e:
        pipeline.prepare(path, [], [])
    assert str(e.value) == f"{path}: {line}"
    path.write_text("name: t\nplugins: [./tidy.py]\nstages:\n  tidy: {steps: 1, style: loose}\n")
    pipeline.prepare(path, [], [])  # valid values pass
