"""Inside a long step: its passes are reported, and Ctrl-C stops after the current pass, not at the step's end.

A real SIGINT goes to a real `python -m rlkit run` while its pretrain is inside step 3 of 4 passes a step: it
must drop that step, save step 2 (its weights, optimizer, data position and random state as they were when
step 2 ended) and, resumed, end with the weights of a run never stopped.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint, verify_checkpoint

from experiments import PRETRAIN, TOKENIZER, experiment_text

SLOW = '''\
"""Test plugin: AdamW whose model's forward N sleeps SLOW_SECONDS (SLOW_AT=N), and whose forward M writes
STOP_MARKER and waits for a stop request (STOP_AT=M): a step slow enough to report its passes, then held."""
import os
import re
import pathlib
import time

import torch

import rlkit
from rlkit.core import interrupt


@rlkit.hookimpl
def rlkit_optimizers():
    return {"slow_adamw": slow_adamw}


def slow_adamw(model, lr=0.005):
    forwards = [0]

    def before_forward(module, args):
        forwards[0] += 1
        if forwards[0] == int(os.environ.get("SLOW_AT", 0)):
            time.sleep(float(os.environ["SLOW_SECONDS"]))
        if forwards[0] == int(os.environ.get("STOP_AT", 0)):
            pathlib.Path(os.environ["STOP_MARKER"]).write_text("held")
            while not interrupt.stop_requested():
                time.sleep(0.02)

    model.register_forward_pre_hook(before_forward)
    return torch.optim.AdamW([{"params": list(model.parameters()), "initial_lr": lr}], lr=lr)
'''

# 4 passes of 8 rows x 128 tokens a step; step 3's passes are forwards 9-12
EXPERIMENT = experiment_text(
    {"tokenizer": {**TOKENIZER, "vocab_size": 512},
     "pretrain": {**PRETRAIN, "steps": 4, "total_batch_tokens": 4096, "warmdown_frac": 0.5,
                  "optimizer": {"name": "slow_adamw", "args": {"lr": 0.005}}, "log_every": 1, "save_every": 0}},
    name="k", plugins=["./slow.py"])


def setup(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.yaml").write_text(EXPERIMENT)
    (folder / "slow.py").write_text(SLOW)
    return folder


def rlkit(folder: Path, *args, **cues) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in cues.items()}}
    return subprocess.Popen([sys.executable, "-m", "rlkit", *args], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def weights(stage_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(stage_dir))[0]


def test_ctrl_c_inside_a_step_saves_the_last_finished_step_and_resumes_exactly(tmp_path):
    straight = setup(tmp_path / "straight")
    out, err = rlkit(straight, "run", "exp.yaml").communicate(timeout=300)
    assert "Traceback" not in err, err

    folder = setup(tmp_path / "stopped")
    marker = folder / "held"
    proc = rlkit(folder, "run", "exp.yaml", SLOW_AT=10, SLOW_SECONDS=6, STOP_AT=11, STOP_MARKER=marker)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    stopped_at = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert time.time() - stopped_at < 30  # within seconds: one pass and a save, not the rest of the step
    assert re.search(r"^\[pretrain\] step 3: pass 2 of 4, [67]s$", out, re.M)  # the slow step reported its passes
    assert "SIGINT received: stopping after this pass or step and saving" in out
    lines = err.strip().splitlines()
    assert lines[-2] == ("error: stopped during pretrain step 3 (after pass 3 of 4); that step is dropped; saved the "
                         "last finished step, 2: runs/k/pretrain/step_000002")
    assert lines[-1] == "resume with: rlkit run exp.yaml --resume"
    assert verify_checkpoint(folder / "runs/k/pretrain/step_000002")["step"] == 2
    assert not (folder / "runs/k/pretrain/step_000003").exists()

    out, err = rlkit(folder, "run", "exp.yaml", "--resume").communicate(timeout=300)
    assert "[pretrain] resuming at step 2" in out, out + err
    a, b = weights(folder / "runs/k/pretrain"), weights(straight / "runs/k/pretrain")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
