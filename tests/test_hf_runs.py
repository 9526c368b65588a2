"""Whole `rlkit run`s of a tiny Hugging Face model (tests/hf_fixtures.py) as a user starts them, in real
subprocesses: killed with SIGKILL in its rl stage and resumed, and under torchrun with 2 ranks (gloo).

The experiment is sft then rl (grpo) on a random 2-layer Llama from a local folder. To land the kill at a known
point, the reward in cues.py holds the process on its N-th call when RLKIT_TEST_BLOCK="reward:N" says so (the
protocol and helpers of tests/test_reliability.py); the test then SIGKILLs it.
"""
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_fixtures import hf_model  # noqa: E402
from test_reliability import aim_metrics, assert_same_weights, invoke, kill_when_held, rlkit, weights  # noqa: E402

from rlkit.core.checkpoint import latest_checkpoint  # noqa: E402

from experiments import RL, SFT, adamw, experiment_text, task  # noqa: E402

pytestmark = pytest.mark.slow

CUES = '''\
import os
import pathlib
import time

import rlkit

calls = [0]


@rlkit.hookimpl
def rlkit_rewards():
    return {"digits": digits}


def digits(completion, example):
    """The share of digits; on the call RLKIT_TEST_BLOCK="reward:N" names, write the marker and wait to be killed."""
    calls[0] += 1
    if os.environ.get("RLKIT_TEST_BLOCK") == f"reward:{calls[0]}":
        pathlib.Path(os.environ["RLKIT_TEST_MARKER"]).write_text("reward")
        while True:
            time.sleep(0.02)
    return sum(c in "0123456789" for c in completion) / max(1, len(completion))
'''

def hf_experiment(model: Path) -> str:
    """Run h: sft then rl (grpo) on the tiny random Llama saved in `model`, with the cues.py plugin, tracked."""
    return experiment_text(
        {"sft": {**SFT, "task": task(200), "steps": 3, "device_batch_size": 4, "eval_examples": 4,
                 "eval_max_new_tokens": 8},
         "rl": {**RL, "task": task(200), "algorithm": {"name": "grpo"}, "rewards": [{"name": "digits"}],
                "optimizer": adamw(0.01),
                "rollout": {"samples": 4, "temperature": 1.0, "top_k": 0, "max_new_tokens": 8},
                "steps": 4, "init_lr_frac": 1.0, "log_every": 1, "save_every": 2,
                "eval": {"every": 2, "examples": 4, "k": 2}}},
        comment="sft then rl (grpo) on a tiny random Llama from a local folder (tests/test_hf_runs.py)",
        name="h", plugins=["./cues.py"], model={"name": "hf", "args": {"path": str(model)}, "seq_len": 160,
                                                "dtype": "float32"}, tracking={"repo": ".aim"})
CALLS_PER_STEP = 2 * 4  # rl examples_per_step x samples


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return hf_model(tmp_path_factory.mktemp("llama"), "llama")


def setup_folder(folder: Path, model: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.yaml").write_text(hf_experiment(model))
    (folder / "cues.py").write_text(CUES)
    return folder


@pytest.fixture(scope="module")
def straight(model, tmp_path_factory):
    """One uninterrupted run (runs/h, .aim), in this process; its stdout in straight.out."""
    folder = setup_folder(tmp_path_factory.mktemp("straight"), model)
    code, out, err = invoke(folder, "run", "exp.yaml")
    assert code == 0, out + err
    (folder / "straight.out").write_text(out)
    return folder


def test_sigkill_in_rl_then_resume_equals_a_straight_run(straight, model, tmp_path):
    """SIGKILL during rl step 3 (its step-2 checkpoint saved), --resume: the final sft and rl weights bit for bit,
    and every tracked metric (wall-clock speeds aside) the same, each step once, in the same Aim run."""
    folder = setup_folder(tmp_path, model)
    # rl's check tries the reward once before the run (rlkit/lib/evaluation/trial.py), then two steps' calls
    kill_when_held(folder, "run", "exp.yaml", block=f"reward:{2 * CALLS_PER_STEP + 2}")
    assert latest_checkpoint(folder / "runs/h/rl").name == "step_000002"
    assert not (folder / "runs/h/rl/output.json").exists()
    aim_hash = (folder / "runs/h/aim_hash").read_text()

    done = rlkit(folder, "run", "exp.yaml", "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[sft] already finished: skipping (--resume)" in done.stdout
    assert "[rl] resuming at step 2" in done.stdout
    assert (folder / "runs/h/aim_hash").read_text() == aim_hash
    for stage in ("sft", "rl"):
        assert_same_weights(weights(folder / "runs/h" / stage), weights(straight / "runs/h" / stage))
    resumed, unbroken = aim_metrics(folder), aim_metrics(straight)
    assert resumed == unbroken
    assert resumed["reward", "rl"][0] == [1, 2, 3, 4] and resumed["loss", "sft"][0] == [1, 2, 3]


def printed(stdout: str, stage: str, key: str) -> list[float]:
    return [float(m) for m in re.findall(rf"^\[{stage}\] step +\d+/\d+ \| .*?{key} (-?[\d.]+)", stdout, re.M)]


def test_two_processes_equal_one(straight, model, tmp_path):
    """`rlkit run --nproc-per-node 2` (gloo): each rank half the sft rows and one rl prompt; the gradients are
    all-reduced and the rollouts drawn with per-row seeds, so the printed losses and rewards equal one
    process's, and the final weights too, up to the order of float sums."""
    folder = setup_folder(tmp_path, model)
    two = rlkit(folder, "run", "exp.yaml", "--nproc-per-node", "2", "tracking.enabled=false", timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert "world size 2" in two.stdout
    one = (straight / "straight.out").read_text()
    loss1, loss2 = printed(one, "sft", "loss"), printed(two.stdout, "sft", "loss")
    assert len(loss1) == len(loss2) == 3 and loss2 == pytest.approx(loss1, abs=2e-4)  # printed to 4 decimals
    reward1, reward2 = printed(one, "rl", "reward"), printed(two.stdout, "rl", "reward")
    assert len(reward1) == len(reward2) == 4 and reward2 == pytest.approx(reward1, abs=2e-3)
    for stage in ("sft", "rl"):
        a, b = weights(straight / "runs/h" / stage), weights(folder / "runs/h" / stage)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=f"{stage}: {k}")
    sft, rl = weights(folder / "runs/h/sft"), weights(folder / "runs/h/rl")
    assert max((rl[k] - sft[k]).abs().max() for k in rl) > 1e-2  # rl moved them: the tolerance is not vacuous
