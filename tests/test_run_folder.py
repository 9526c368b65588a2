"""One run folder, one process; --resume that continues after a late mistake is fixed; a kill inside the
tokenizer's save; damaged or oddly encoded files named in one line. Every case runs the real CLI in a
subprocess and checks the exit code, the one line, and that what was saved before is byte-identical after.
"""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.scoring import score

from experiments import PRETRAIN, RL, TOKENIZER, experiment_text

HOLD = '''\
"""Test-only: hold the process (until RLKIT_TEST_RELEASE exists) right after the file or checkpoint named by
RLKIT_TEST_HOLD is written, as folder/name: a checkpoint (pretrain/step_000002) or a small file
(tokenizer/tokenizer.json, f/config.yaml, rl/output.json)."""
import os
import pathlib
import time

from rlkit.core import checkpoint, files, handoff, pipeline
from rlkit.lib.text import tokenizer

_commit, _write = checkpoint.commit, files.atomic_write


def _hold(name):
    if os.environ.get("RLKIT_TEST_HOLD") == name:
        pathlib.Path(os.environ["RLKIT_TEST_MARKER"]).write_text("held")
        while not pathlib.Path(os.environ["RLKIT_TEST_RELEASE"]).exists():
            time.sleep(0.05)


def held_commit(tmp, final):
    _commit(tmp, final)
    _hold(f"{final.parent.name}/{final.name}")


def held_write(path, data):
    _write(path, data)
    path = pathlib.Path(path)
    _hold(f"{path.parent.name}/{path.name}")


checkpoint.commit = held_commit
tokenizer.atomic_write = handoff.atomic_write = pipeline.atomic_write = held_write
'''

STAGES = {"tokenizer": TOKENIZER, "pretrain": {**PRETRAIN, "log_every": 2, "save_every": 2}, "rl": RL}


def experiment_yaml(stages: dict = STAGES) -> str:
    """The YAML of run f with the hold.py plugin; line 3 is `seed: 0`."""
    return experiment_text(stages, comment="tokenizer -> pretrain -> rl on a depth-1 model (tests): rlkit run exp.yaml",
                           name="f", plugins=["./hold.py"])


EXPERIMENT = experiment_yaml()


def folder_with(path: Path, text: str = EXPERIMENT) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "exp.yaml").write_text(text)
    (path / "hold.py").write_text(HOLD)
    return path


def env(folder: Path, hold: str = "") -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RLKIT_TEST_HOLD": hold, "RLKIT_TEST_MARKER": str(folder / "held"),
            "RLKIT_TEST_RELEASE": str(folder / "release")}


def rlkit(folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=folder, env=env(folder), capture_output=True,
                          text=True, timeout=300)


def start_held(folder: Path, hold: str, *args) -> subprocess.Popen:
    """Start `rlkit ARGS` and return once it is held right after writing `hold`."""
    (folder / "held").unlink(missing_ok=True)
    (folder / "release").unlink(missing_ok=True)
    log = open(folder / "held.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", *args], cwd=folder, env=env(folder, hold), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (folder / "held").exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"never held at {hold}:\n{(folder / 'held.log').read_text()}")
        time.sleep(0.05)
    return proc


def one_line_error(out: subprocess.CompletedProcess, *parts: str) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def weights(stage_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(stage_dir))[0]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = folder_with(tmp_path_factory.mktemp("straight"))
    out = rlkit(folder, "run", "exp.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    return folder


def test_two_runs_with_one_name_started_together_one_runs_the_other_refuses(straight, tmp_path):
    folder = folder_with(tmp_path)
    first = start_held(folder, "pretrain/step_000002", "run", "exp.yaml")
    try:
        second = rlkit(folder, "run", "exp.yaml", "seed=1")
        one_line_error(second, f"run_dir: runs/f is in use by another rlkit run (pid {first.pid} on ",
                       "start this one with name=<new name>")
    finally:
        (folder / "release").write_text("go")
    assert first.wait(timeout=300) == 0, (folder / "held.log").read_text()
    assert "seed: 0" in (folder / "runs/f/config.yaml").read_text()  # only the first run's work is there
    assert same(weights(folder / "runs/f/rl"), weights(straight / "runs/f/rl"))


def test_a_folder_with_checkpoints_but_no_config_is_never_overwritten(straight, tmp_path):
    folder = folder_with(tmp_path)
    (folder / "runs").mkdir()
    (folder / "runs/f").mkdir()
    (folder / "runs/f/pretrain").symlink_to(straight / "runs/f/pretrain", target_is_directory=True)
    before = digest(straight / "runs/f")
    one_line_error(rlkit(folder, "run", "exp.yaml"), "run_dir: runs/f already holds a run")
    assert digest(straight / "runs/f") == before


def test_resume_with_nothing_to_resume_says_so(tmp_path):
    folder = folder_with(tmp_path)
    one_line_error(rlkit(folder, "run", "exp.yaml", "--resume"), "--resume: runs/f holds no run to resume")


def test_a_late_mistake_fixed_then_resumed_keeps_the_finished_stages(straight, tmp_path):
    """rl's rollouts do not fit seq_len: its prompts' token counts need the trained tokenizer, so this is found
    right after the tokenizer entry, before pretrain starts (the later entries are checked again then).
    Fixing the value and --resume continues after the tokenizer and ends equal to a straight run."""
    folder = folder_with(tmp_path)
    bad = rlkit(folder, "run", "exp.yaml", "stages.rl.rollout.max_new_tokens=120")
    one_line_error(bad, "stages.rl.rollout.max_new_tokens: prompts reach", "exceed model.seq_len 128")
    assert "[pretrain]" not in bad.stdout and not (folder / "runs/f/pretrain").exists()
    saved = digest(folder / "runs/f/tokenizer")
    out = rlkit(folder, "run", "exp.yaml", "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[tokenizer] already finished: skipping (--resume)" in out.stdout
    assert "--resume: stages.rl.rollout.max_new_tokens changed; rl has not started yet" in out.stdout
    assert digest(folder / "runs/f/tokenizer") == saved
    assert same(weights(folder / "runs/f/rl"), weights(straight / "runs/f/rl"))


def test_rollouts_with_no_room_for_a_prompt_fail_in_rlkit_check(tmp_path):
    """Before the tokenizer exists, what is certain: max_new_tokens >= model.seq_len leaves no room at all."""
    out = rlkit(folder_with(tmp_path), "check", "exp.yaml", "stages.rl.rollout.max_new_tokens=128")
    one_line_error(out, "exp.yaml: stages.rl.rollout.max_new_tokens: 128 new tokens leave no room for a prompt in "
                        "model.seq_len 128")


def test_resume_refuses_changes_to_stages_that_ran_and_names_them(straight, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(straight, folder)
    before = digest(folder / "runs")
    one_line_error(rlkit(folder, "run", "exp.yaml", "stages.pretrain.steps=6", "--resume"),
                   "--resume: the config differs", "stages.pretrain.steps", "(entries that already ran: pretrain)")
    assert digest(folder / "runs") == before


def test_killed_inside_the_tokenizers_save_resumes_to_a_straight_run(straight, tmp_path):
    folder = folder_with(tmp_path)
    proc = start_held(folder, "tokenizer/tokenizer.tiktoken", "run", "exp.yaml")  # merges written, not tokenizer.json
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (folder / "runs/f/tokenizer/output.json").exists()
    out = rlkit(folder, "run", "exp.yaml", "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[tokenizer] vocab" in out.stdout  # trained again: a half-saved tokenizer never counts as finished
    assert same(weights(folder / "runs/f/rl"), weights(straight / "runs/f/rl"))


def test_a_damaged_tokenizer_is_named_in_one_line(straight, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(straight, folder)
    shutil.rmtree(folder / "runs/f/rl")
    ranks = folder / "runs/f/tokenizer/tokenizer.tiktoken"
    ranks.write_bytes(ranks.read_bytes()[:100])
    one_line_error(rlkit(folder, "run", "exp.yaml", "--resume"), "tokenizer: runs/f/tokenizer is damaged",
                   "does not match the sha256")


KILL_POINTS = ["tokenizer/tokenizer.tiktoken", "tokenizer/tokenizer.json", "tokenizer/output.json", "f/config.yaml",
               "pretrain/step_000002", "pretrain/step_000004", "pretrain/output.json", "rl/step_000002",
               "rl/output.json"]


@pytest.mark.slow
def test_killed_at_ten_points_across_every_stage_and_save_resumes_to_a_straight_run(straight, tmp_path):
    """SIGKILL right after each of these writes, then --resume (twice for the config, which is written again
    by the resumed run: a kill after that second write too), ends with a straight run's weights every time."""
    for i, point in enumerate(KILL_POINTS + ["f/config.yaml"]):
        folder = folder_with(tmp_path / f"k{i}")
        args = ["run", "exp.yaml"]
        if i == len(KILL_POINTS):  # the tenth: a kill after the resumed run rewrote its config
            kill(start_held(folder, "pretrain/step_000002", *args))
            args.append("--resume")
        kill(start_held(folder, point, *args))
        out = rlkit(folder, "run", "exp.yaml", "--resume")
        assert out.returncode == 0, (point, out.stdout + out.stderr)
        for stage in ("pretrain", "rl"):
            assert same(weights(folder / "runs/f" / stage), weights(straight / "runs/f" / stage)), (point, stage)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.parametrize("where", ["yaml", "jsonl"])
def test_text_that_is_not_utf8_is_named_with_its_line(where, tmp_path):
    folder = folder_with(tmp_path)
    if where == "yaml":
        (folder / "exp.yaml").write_bytes(EXPERIMENT.encode().replace(b"seed: 0", b"seed: 0 # caf\xe9"))
        one_line_error(rlkit(folder, "check", "exp.yaml"), "exp.yaml: not UTF-8 text at line 3 (byte 0xe9)")
    else:
        (folder / "docs.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
        experiment = experiment_yaml({**STAGES, "tokenizer": {**TOKENIZER, "data": {"source": "./docs.jsonl"}}})
        one_line_error(rlkit(folder_with(folder, experiment), "run", "exp.yaml"),
                       "docs.jsonl:2: not UTF-8 text (byte 0xe9 at column 14)")


def test_a_reward_that_swallows_the_timeout_is_still_stopped():
    def retrying(completion, example):
        while True:
            try:
                time.sleep(10)
            except Exception:  # noqa: BLE001 -- a user's retry loop: swallows ordinary exceptions
                continue

    example = {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "#### 4"}
    began = time.time()
    with pytest.raises(RlkitError, match=r"reward 'retrying' at rl step 1 .* took longer than 0.3s \(reward_timeout\)"):
        score([("retrying", 1.0, retrying)], ["4"], [example], "at rl step 1", timeout=0.3)
    assert time.time() - began < 5
