"""The open pipeline: a user's stage and a user's model from local files, the YAML's order as the run
order, one stage kind twice, resume after SIGKILL, and where each entry shows up (folder, report, Aim).

The plugins are the examples in docs/plugins.md (noise.py, window_lm.py), loaded through the real plugin
manager by `rlkit run`. A kill is placed by hold.py, a test-only plugin that pauses the process right
after a named checkpoint is committed, so the test can SIGKILL it there.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint

from experiments import PRETRAIN, RL, SFT, TOKENIZER, TOP, adamw, experiment_text, task, write_experiment

HOLD = '''\
"""Test-only: pause right after the checkpoint named by RLKIT_TEST_HOLD (e.g. jitter/step_000002) is saved."""
import os
import pathlib
import time

from rlkit.core import checkpoint

_commit = checkpoint.commit


def held_commit(tmp, final):
    _commit(tmp, final)
    if os.environ.get("RLKIT_TEST_HOLD") == f"{final.parent.name}/{final.name}":
        pathlib.Path(os.environ["RLKIT_TEST_MARKER"]).write_text("held")
        time.sleep(600)


checkpoint.commit = held_commit
'''

NOISE_RUN = experiment_text(
    {"tokenizer": {**TOKENIZER, "vocab_size": 512},
     "pretrain": {**PRETRAIN, "steps": 6, "log_every": 3},
     "jitter": {"kind": "noise", "steps": 4, "scale": 0.01},
     "sft": SFT},
    comment="a user's stage between two built-in ones: rlkit run exp.yaml",
    name="nz", plugins=["./noise.py", "./hold.py"], tracking={"repo": ".aim"})

RL_EASY = {"kind": "rl", **RL, "task": task(100, operands=2), "rollout": {"samples": 4, "max_new_tokens": 16},
           "device_batch_size": 8}
CURRICULUM = experiment_text(
    {"tokenizer": TOKENIZER,
     "rl_easy": RL_EASY,
     "rl_hard": {**RL_EASY, "task": task(100, operands=3), "steps": 3, "save_every": 1}},
    comment="one stage kind twice: easy problems, then harder ones from where the first left off",
    name="cur", plugins=["./hold.py"], model={**TOP["model"], "seq_len": 160})


def setup_folder(folder: Path, experiment: str, doc_example) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.yaml").write_text(experiment)
    (folder / "noise.py").write_text(doc_example("rlkit_stages"))
    (folder / "hold.py").write_text(HOLD)
    return folder


def rlkit(folder: Path, *args, hold: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLKIT_TEST_HOLD": hold, "RLKIT_TEST_MARKER": str(folder / "held")}
    return subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


def kill_at(folder: Path, checkpoint: str, *args) -> None:
    """Run until `checkpoint` (entry/step_N) is saved, then SIGKILL: no chance to clean up."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLKIT_TEST_HOLD": checkpoint,
           "RLKIT_TEST_MARKER": str(folder / "held")}
    (folder / "held").unlink(missing_ok=True)
    with open(folder / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlkit", *args], cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not (folder / "held").exists():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"never reached {checkpoint}:\n{(folder / 'killed.log').read_text()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL


def weights(path: Path) -> dict:
    state, _, _ = load_checkpoint(latest_checkpoint(path))
    return state


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight_noise(tmp_path_factory, doc_example):
    folder = setup_folder(tmp_path_factory.mktemp("noise"), NOISE_RUN, doc_example)
    out = rlkit(folder, "run", "exp.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    return folder, out.stdout


def test_a_local_stage_runs_between_built_in_ones_in_yaml_order(straight_noise):
    folder, printed = straight_noise
    order = [printed.index(f"[{entry}] done in") for entry in ("tokenizer", "pretrain", "jitter", "sft")]
    assert order == sorted(order), printed
    assert "[jitter] starting from runs/nz/pretrain/step_000006" in printed
    assert "[sft] starting from runs/nz/jitter/step_000004" in printed
    run = folder / "runs/nz"
    before, after = weights(run / "pretrain"), weights(run / "jitter")
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 0 < moved < 0.2, moved  # 4 nudges of std 0.01: every weight moved a little
    assert json.loads((run / "jitter/output.json").read_text())["checkpoint"] == "step_000004"


def test_a_local_stage_shows_in_the_report_card_and_in_aim_under_its_entry_name(straight_noise):
    folder, _ = straight_noise
    card = (folder / "runs/nz/report.md").read_text()
    assert "| jitter | - | 4 |" in card and "### jitter" in card  # no tokens/s tracked, 4 steps and "4 nudges of scale 0.01" in card
    read = subprocess.run([sys.executable, "-c", (
        "import json, sys\nfrom aim import Repo\n"
        "run = next(iter(Repo.from_path(sys.argv[1]).query_runs(\"run.name == 'nz'\", report_mode=0).iter_runs())).run\n"
        "print(json.dumps(sorted(f\"{n}@{c.to_dict().get('stage')}\" for n, c, _ in run.iter_metrics_info())))"),
        str(folder / ".aim")], capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    assert "weight_norm@jitter" in json.loads(read.stdout.strip().splitlines()[-1])


def test_a_local_stage_killed_mid_way_resumes_to_the_same_weights(straight_noise, tmp_path, doc_example):
    folder, _ = straight_noise
    again = setup_folder(tmp_path, NOISE_RUN, doc_example)
    kill_at(again, "jitter/step_000002", "run", "exp.yaml", "tracking.enabled=false")
    assert not (again / "runs/nz/jitter/output.json").exists()  # the entry did not finish
    out = rlkit(again, "run", "exp.yaml", "tracking.enabled=false", "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[pretrain] already finished: skipping (--resume)" in out.stdout
    assert "[jitter] resuming at step 2" in out.stdout
    for entry in ("jitter", "sft"):
        assert same(weights(again / "runs/nz" / entry), weights(folder / "runs/nz" / entry)), entry


def test_the_same_stage_twice_runs_in_order_and_resume_skips_the_first(tmp_path, doc_example):
    straight = setup_folder(tmp_path / "straight", CURRICULUM, doc_example)
    out = rlkit(straight, "run", "exp.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.index("[rl_easy] done in") < out.stdout.index("[rl_hard] starting from")
    assert "[rl_hard] starting from runs/cur/rl_easy/step_000002" in out.stdout
    config = (straight / "runs/cur/config.yaml").read_text()
    assert config.index("rl_easy:") < config.index("rl_hard:") and config.count("kind: rl") == 2

    killed = setup_folder(tmp_path / "killed", CURRICULUM, doc_example)
    kill_at(killed, "rl_hard/step_000001", "run", "exp.yaml")
    out = rlkit(killed, "run", "exp.yaml", "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[rl_easy] already finished: skipping (--resume)" in out.stdout
    assert "[rl_hard] resuming at step 1" in out.stdout
    assert same(weights(killed / "runs/cur/rl_hard"), weights(straight / "runs/cur/rl_hard"))


def test_a_local_model_goes_through_sft_and_rl(tmp_path, doc_example, cli, monkeypatch):
    (tmp_path / "window_lm.py").write_text(doc_example("rlkit_models"))
    write_experiment(tmp_path / "exp.yaml", {
        "tokenizer": TOKENIZER,
        "sft": {**SFT, "steps": 30, "examples_per_step": 16, "device_batch_size": 16, "optimizer": {"name": "muon"},
                "init_lr_frac": 1.0, "warmdown_frac": 0.0, "eval_examples": 8, "eval_max_new_tokens": 40},
        "rl": {**RL, "optimizer": adamw(0.001), "rollout": {"samples": 4, "max_new_tokens": 40}, "steps": 3,
               "examples_per_step": 4, "device_batch_size": 16, "eval": {"every": 0, "examples": 8, "k": 2}}},
        name="mlp", plugins=["./window_lm.py"], model={"name": "window_lm", "args": {"window": 6, "width": 32},
                                                      "seq_len": 160})
    monkeypatch.chdir(tmp_path)
    result = cli("run", "exp.yaml")
    assert result.exit_code == 0, result.stdout + result.stderr
    losses = [float(line.split("| loss ")[1].split()[0]) for line in result.stdout.splitlines()
              if line.startswith("[sft] step")]
    assert len(losses) == 30 and losses[-1] < losses[0] - 2.0, losses  # from ~ln(300): the real muon plugin
    assert "[sft] new window_lm model" in result.stdout
    assert "[rl] eval at step 3: pass@1" in result.stdout  # rollouts and evals through the real sampler
    meta = json.loads((latest_checkpoint(tmp_path / "runs/mlp/rl") / "meta.json").read_text())
    assert meta["model"] == {"name": "window_lm", "args": {"window": 6, "width": 32}, "seq_len": 160}
    lengths = [float(line.split("| len ")[1].split()[0]) for line in result.stdout.splitlines()
               if line.startswith("[rl] step")]
    assert lengths and all(0 < n <= 40 for n in lengths), lengths
