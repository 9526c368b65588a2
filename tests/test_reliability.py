"""Reliability, as a user meets it: `rlkit run` killed, interrupted, crashing mid-save, run twice, fed faulty
plugins and bad input. docs/reliability.md lists each promise and the test here that checks it.

One tiny experiment (tokenizer -> pretrain -> rl, depth 1, vocab 512, seq_len 128) is run straight once per
module, in process, tracked in its own Aim repo; the other tests compare against its weights and metrics.
Kills and signals go to real `python -m rlkit run` subprocesses. To land a kill at a known point, the local
plugin file cues.py holds the process (an optimizer step, a reward call, or a checkpoint's rename) when an
environment variable says so, and writes a marker file; the test then signals it. The experiment itself
never changes between a run and its --resume (rlkit refuses a changed config).
"""
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint, verify_checkpoint

from experiments import PRETRAIN, RL, TOKENIZER, adamw, experiment_text, task, without, write_experiment

CUES = '''\
"""Test plugin: an optimizer and a reward that behave normally, and hold, poison or misbehave on cue.

RLKIT_TEST_BLOCK="step:N" (the N-th optimizer step of this process, before the update), "reward:N" (the
N-th reward call) or "commit:N" (checkpoint step N, its files written, just before its rename) writes the
file RLKIT_TEST_MARKER and holds there until the process is killed or, with RLKIT_TEST_RELEASE=1, until a
stop (Ctrl-C) was requested. Faults within one run come from the plugins' args.
"""
import json
import os
import pathlib
import time

import torch

import rlkit
from rlkit.core import checkpoint, interrupt


def hold(where, count):
    if os.environ.get("RLKIT_TEST_BLOCK") != f"{where}:{count}":
        return
    pathlib.Path(os.environ["RLKIT_TEST_MARKER"]).write_text(where)
    while not (os.environ.get("RLKIT_TEST_RELEASE") and interrupt.stop_requested()):
        time.sleep(0.02)


if os.environ.get("RLKIT_TEST_BLOCK", "").startswith("commit:"):
    _commit = checkpoint.commit

    def held_commit(tmp, final):
        hold("commit", int(final.name.removeprefix("step_")))
        _commit(tmp, final)

    checkpoint.commit = held_commit


@rlkit.hookimpl
def rlkit_optimizers():
    return {"cued_adamw": cued_adamw}


@rlkit.hookimpl
def rlkit_rewards():
    return {"digits": digits}


def cued_adamw(model, lr=0.005, poison_at=0, bad_grad_at=0, bad_value="nan"):
    """AdamW; poison_at=N: the N-th step leaves a weight at bad_value; bad_grad_at=N: the N-th step's
    backward gives one weight a gradient of bad_value."""
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "initial_lr": lr}], lr=lr)
    steps, first = [0], next(model.parameters())

    def before(opt, args, kwargs):
        steps[0] += 1
        hold("step", steps[0])

    def after(opt, args, kwargs):
        if steps[0] == poison_at:
            with torch.no_grad():
                first.fill_(float(bad_value))

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    first.register_hook(lambda g: torch.full_like(g, float(bad_value)) if steps[0] + 1 == bad_grad_at else g)
    return optimizer


calls = [0]


def digits(completion, example, fault="", at_call=0, log=""):
    """The share of digits in the completion; on call `at_call`, misbehave as `fault` says."""
    calls[0] += 1
    hold("reward", calls[0])
    if calls[0] == at_call and fault:
        if log:  # the test's window: which example the fault happened on
            pathlib.Path(log).write_text(json.dumps(example["messages"][0]["content"]))
        if fault == "raise":
            raise ValueError("cannot score this")
        if fault == "hang":
            time.sleep(60)
        return {"none": None, "nan": float("nan"), "inf": float("inf"), "text": "0.5"}[fault]
    return sum(c in "0123456789" for c in completion) / max(1, len(completion))
'''

CUED_ADAMW = {"name": "cued_adamw", "args": {"lr": 0.005}}
EXPERIMENT = experiment_text(
    {"tokenizer": {**TOKENIZER, "vocab_size": 512},
     "pretrain": {**PRETRAIN, "steps": 8, "optimizer": CUED_ADAMW,  # 1024 tokens: one pass of 8 rows x 128
                  "warmdown_frac": 0.5,  # the lr falls after the kill: a resumed run must follow it
                  "eval_every": 4, "eval_tokens": 2048, "log_every": 1, "save_every": 4},
     "rl": {**RL, "task": task(200), "rewards": [{"name": "digits"}], "optimizer": adamw(0.01),
            "rollout": {"samples": 4, "temperature": 1.0, "top_k": 0, "max_new_tokens": 8}, "steps": 4,
            "examples_per_step": 2, "device_batch_size": 8,  # 8 reward calls a step
            "init_lr_frac": 1.0, "save_every": 2, "eval": {"every": 2, "examples": 4, "k": 2}}},
    comment="tokenizer -> pretrain -> rl on a depth-1 model, for the reliability tests: rlkit run exp.yaml",
    name="k", plugins=["./cues.py"], tracking={"repo": ".aim"})
TIMING = {"tokens_per_s", "mfu", "rollout_tok_s", "train_tok_s", "rollout_s", "reward_s", "train_s"}  # wall clock
CALLS_PER_STEP = 2 * 4  # rl examples_per_step x samples


# --------------------------------------------------------------------------- helpers

def setup_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.yaml").write_text(EXPERIMENT)
    (folder / "cues.py").write_text(CUES)
    return folder


def invoke(folder: Path, *args):
    """The real `rlkit` app in this process, run in `folder`: (exit code, stdout, stderr)."""
    from rlkit.cli import app

    separate = "mix_stderr" in inspect.signature(CliRunner.__init__).parameters  # click < 8.2 mixes them
    runner = CliRunner(mix_stderr=False) if separate else CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def env(**cues) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **cues}


def rlkit(folder: Path, *args, cues=None, timeout=120) -> subprocess.CompletedProcess:
    """`python -m rlkit ARGS` in folder, to the end."""
    return subprocess.run([sys.executable, "-m", "rlkit", *map(str, args)], cwd=folder, env=env(**(cues or {})),
                          capture_output=True, text=True, timeout=timeout)


def start_held(folder: Path, *args, block: str, release: bool = False) -> subprocess.Popen:
    """Start `python -m rlkit ARGS` with a cue and return once cues.py holds the process there."""
    marker = folder / "held"
    marker.unlink(missing_ok=True)
    cues = {"RLKIT_TEST_BLOCK": block, "RLKIT_TEST_MARKER": str(marker)} | ({"RLKIT_TEST_RELEASE": "1"} if release
                                                                          else {})
    out, err = open(folder / "stdout.txt", "w"), open(folder / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", *map(str, args)], cwd=folder, env=env(**cues),
                            stdout=out, stderr=err)
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"never held at {block}:\n{(folder / 'stdout.txt').read_text()}\n"
                                 f"{(folder / 'stderr.txt').read_text()}")
        time.sleep(0.02)
    return proc


def kill_when_held(folder: Path, *args, block: str) -> None:
    proc = start_held(folder, *args, block=block)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: as a crash, an OOM kill or a power cut
    assert proc.wait(timeout=30) == -signal.SIGKILL


def weights(stage_dir: Path) -> dict:
    state, _, _ = load_checkpoint(latest_checkpoint(stage_dir))
    return state


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def aim_metrics(folder: Path) -> dict:
    """{(metric, stage): (steps, values)} of the one Aim run in folder/.aim, wall-clock speeds left out."""
    import aim

    repo = aim.Repo.from_path(str(folder / ".aim"))
    hashes = list(repo.list_all_runs())
    assert len(hashes) == 1, hashes  # a resumed run continues the same Aim run
    run = aim.Run(run_hash=hashes[0], repo=repo, read_only=True)  # reads the index: only closed runs are there
    out = {}
    for m in run.metrics():
        if m.name in TIMING or m.name.startswith("__system__"):
            continue
        steps, (values,) = m.data.view("val").items_list()
        out[m.name, m.context.to_dict()["stage"]] = (list(steps), list(values))
    return out


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}  # the lock names its last holder


def pretrain_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k[1] in ("tokenizer", "pretrain")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The folder of one uninterrupted run of EXPERIMENT (runs/k, .aim), made in process."""
    folder = setup_folder(tmp_path_factory.mktemp("straight"))
    code, out, err = invoke(folder, "run", "exp.yaml")
    assert code == 0, out + err
    return folder


@pytest.fixture(scope="module")
def straight_metrics(straight):
    return aim_metrics(straight)


# --------------------------------------------------------------------------- resume after SIGKILL

@pytest.mark.slow
def test_killed_in_pretrain_and_in_rl_then_resumed_equals_a_straight_run(straight, straight_metrics, tmp_path):
    """SIGKILL during pretrain step 5 (checkpoint 4 saved), --resume, SIGKILL during rl step 3 (checkpoint 2
    saved), --resume: the same final weights, bit for bit, and the same tracked metrics in the same Aim run,
    each step once: same data position, RNG states, rollout seeds, optimizer state and lr schedule."""
    folder = setup_folder(tmp_path)
    kill_when_held(folder, "run", "exp.yaml", block="step:5")
    assert latest_checkpoint(folder / "runs/k/pretrain").name == "step_000004"
    aim_hash = (folder / "runs/k/aim_hash").read_text()

    # rl's check tries the reward once (rlkit/lib/evaluation/trial.py), before the run and again once the
    # tokenizer is known; then two steps' calls
    kill_when_held(folder, "run", "exp.yaml", "--resume", block=f"reward:{2 * CALLS_PER_STEP + 3}")
    out = (folder / "stdout.txt").read_text()
    assert "[tokenizer] already finished: skipping (--resume)" in out
    assert "[pretrain] resuming at step 4" in out
    assert latest_checkpoint(folder / "runs/k/rl").name == "step_000002"

    done = rlkit(folder, "run", "exp.yaml", "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[pretrain] already finished: skipping (--resume)" in done.stdout  # not rerun
    assert "[rl] resuming at step 2" in done.stdout
    assert (folder / "runs/k/aim_hash").read_text() == aim_hash
    for stage in ("pretrain", "rl"):
        assert_same_weights(weights(folder / "runs/k" / stage), weights(straight / "runs/k" / stage))
    resumed = aim_metrics(folder)
    assert resumed == straight_metrics
    assert resumed["loss", "pretrain"][0] == list(range(1, 9))
    assert resumed["reward", "rl"][0] == [1, 2, 3, 4]
    assert resumed["pass@1", "rl"][0] == [0, 2, 4]
    # the report's reward over the first and last steps covers steps from before the kill (kept in checkpoints)
    summary = [json.loads((f / "runs/k/summary.json").read_text())["stages"]["rl"] for f in (folder, straight)]
    assert summary[0]["reward_start"] == summary[1]["reward_start"] == resumed["reward", "rl"][1][0]


# --------------------------------------------------------------------------- Ctrl-C

@pytest.mark.slow
def test_ctrl_c_saves_this_step_prints_the_resume_command_and_it_resumes(straight, straight_metrics, tmp_path):
    folder = setup_folder(tmp_path)
    args = ["run", "exp.yaml", "stages.rl=null", "stages.pretrain.optimizer.args={lr: 0.005}"]  # as in the YAML
    proc = start_held(folder, *args, block="step:5", release=True)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 1
    out, err = (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text()
    assert "SIGINT received: stopping after this pass or step and saving" in out
    assert "error: stopped at pretrain step 5; saved runs/k/pretrain/step_000005" in err
    resume = err.strip().splitlines()[-1]
    assert resume == ("resume with: rlkit run exp.yaml stages.rl=null 'stages.pretrain.optimizer.args={lr: 0.005}' "
                      "--resume")
    assert "Traceback" not in err
    meta = verify_checkpoint(folder / "runs/k/pretrain/step_000005")
    assert meta["step"] == 5 and meta["done"] is False
    summary = json.loads((folder / "runs/k/summary.json").read_text())
    assert summary["status"] == "interrupted" and "stopped at pretrain step 5" in summary["error"]
    # the Aim run was closed (an unclosed run reads as empty): steps 1-5, as the straight run had them
    stopped = aim_metrics(folder)
    assert stopped["loss", "pretrain"] == tuple(v[:5] for v in straight_metrics["loss", "pretrain"])

    done = rlkit(folder, *shlex.split(resume.removeprefix("resume with: rlkit ")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[pretrain] resuming at step 5" in done.stdout
    assert json.loads((folder / "runs/k/summary.json").read_text())["status"] == "finished"
    assert_same_weights(weights(folder / "runs/k/pretrain"), weights(straight / "runs/k/pretrain"))
    assert aim_metrics(folder) == pretrain_only(straight_metrics)


@pytest.mark.slow
def test_sigterm_stops_cleanly_like_ctrl_c(tmp_path):
    """What a scheduler (Slurm, Kubernetes) sends before it kills a job."""
    folder = setup_folder(tmp_path)
    proc = start_held(folder, "run", "exp.yaml", "stages.rl=null", block="step:5", release=True)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    out, err = (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text()
    assert "SIGTERM received: stopping after this pass or step and saving" in out
    assert err.strip().splitlines() == ["error: stopped at pretrain step 5; saved runs/k/pretrain/step_000005",
                                        "resume with: rlkit run exp.yaml stages.rl=null --resume"]
    assert verify_checkpoint(folder / "runs/k/pretrain/step_000005")["step"] == 5


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once_and_damages_nothing(tmp_path):
    folder = setup_folder(tmp_path)
    proc = start_held(folder, "run", "exp.yaml", "stages.rl=null", block="step:5")  # held even after a stop
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 30
    while "SIGINT received" not in (folder / "stdout.txt").read_text() and time.time() < deadline:
        time.sleep(0.02)
    second = time.time()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=30)
    assert code != 0 and time.time() - second < 15
    stage = folder / "runs/k/pretrain"
    assert latest_checkpoint(stage) == stage / "step_000004"
    assert sorted(p.name for p in stage.iterdir()) == ["step_000004"]  # no half checkpoint, no leftovers


# --------------------------------------------------------------------------- crashes while saving

@pytest.mark.slow
def test_killed_between_writing_and_renaming_a_checkpoint_resumes_from_the_previous_one(straight, tmp_path):
    folder = setup_folder(tmp_path)
    args = ["run", "exp.yaml", "stages.rl=null"]
    kill_when_held(folder, *args, block="commit:8")  # pretrain's last checkpoint: written, not renamed
    stage = folder / "runs/k/pretrain"
    (tmp,) = stage.glob(".tmp-step_000008-*")
    assert {p.name for p in tmp.iterdir()} == {"model.safetensors", "optimizer.pt", "meta.json"}
    assert not (stage / "step_000008").exists()

    code, out, err = invoke(folder, *args, "--resume")
    assert code == 0, out + err
    assert "[pretrain] resuming from runs/k/pretrain/step_000004" in out
    assert "[pretrain] resuming at step 4" in out
    assert_same_weights(weights(stage), weights(straight / "runs/k/pretrain"))
    assert not list(stage.glob(".tmp-*"))  # the next save cleared the dead process's leftover


def test_a_truncated_last_checkpoint_is_named_and_resume_falls_back(straight, straight_metrics, tmp_path):
    """A finished run whose last rl checkpoint was cut short (a full disk, a bad copy): --resume must not take
    the stage for finished; it says which checkpoint is damaged and continues from the one before."""
    folder = tmp_path / "copy"
    shutil.copytree(straight, folder)
    model = folder / "runs/k/rl/step_000004/model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])

    code, out, err = invoke(folder, "run", "exp.yaml", "--resume")
    assert code == 0, out + err
    assert "[pretrain] already finished: skipping (--resume)" in out
    damaged = [line for line in out.splitlines() if "is damaged" in line]
    assert len(damaged) == 1, out
    assert damaged[0].startswith("checkpoint runs/k/rl/step_000004 is damaged (")
    assert "truncated?" in damaged[0] and damaged[0].endswith("; using runs/k/rl/step_000002")
    assert "[rl] resuming at step 2" in out
    assert_same_weights(weights(folder / "runs/k/rl"), weights(straight / "runs/k/rl"))
    assert aim_metrics(folder) == straight_metrics


# --------------------------------------------------------------------------- determinism

def test_the_same_seed_gives_the_same_metrics_and_another_seed_others(straight, straight_metrics, tmp_path):
    again = setup_folder(tmp_path / "again")
    other = setup_folder(tmp_path / "other")
    for folder, extra in ((again, []), (other, ["seed=1"])):
        code, out, err = invoke(folder, "run", "exp.yaml", *extra)
        assert code == 0, out + err
    assert aim_metrics(again) == straight_metrics  # bitwise: the floats Aim stored
    for stage in ("pretrain", "rl"):
        assert_same_weights(weights(again / "runs/k" / stage), weights(straight / "runs/k" / stage))
    different = aim_metrics(other)
    assert different.keys() == straight_metrics.keys()
    for key in [("loss", "pretrain"), ("bpb", "pretrain"), ("reward", "rl"), ("loss", "rl")]:
        assert different[key][0] == straight_metrics[key][0]
        assert different[key][1] != straight_metrics[key][1], key


# --------------------------------------------------------------------------- faults in user code

def one_line_error(code: int, err: str, *parts: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


REWARD_FAULTS = {
    "raises": ("raise", "raised ValueError: cannot score this"),
    "returns-none": ("none", "returned None; a reward must return a finite float"),
    "returns-text": ("text", "returned '0.5'; a reward must return a finite float"),
    "returns-nan": ("nan", "returned nan; a reward must return a finite float"),
    "returns-inf": ("inf", "returned inf; a reward must return a finite float"),
    "hangs": ("hang", "took longer than 0.5s (stages.rl.reward_timeout)"),
}


@pytest.mark.parametrize("fault, said", REWARD_FAULTS.values(), ids=REWARD_FAULTS.keys())
def test_a_faulty_reward_stops_the_run_naming_reward_example_and_value(fault, said, straight, tmp_path):
    """rl from the straight run's pretrain checkpoint; the reward misbehaves on its 3rd call of step 2."""
    before = digest(straight / "runs/k")
    log = tmp_path / "example.json"
    name = f"reward-{fault}"
    write_experiment(
        straight / f"{name}.yaml",
        {"rl": {"init": "runs/k/pretrain", **without(RL, "device_batch_size"), "task": task(200),
                "rewards": [{"name": "digits",
                             "args": {"fault": fault, "at_call": CALLS_PER_STEP + 3, "log": str(log)}}],
                "optimizer": adamw(0.01), "rollout": {"samples": 4, "top_k": 0, "max_new_tokens": 8}, "steps": 3,
                "reward_timeout": 0.5, "save_every": 1, "eval": {"every": 0, "examples": 2, "k": 2}}},
        name=name, seed=None, plugins=["./cues.py"])
    start = time.time()
    code, out, err = invoke(straight, "run", f"{name}.yaml")
    question = json.loads(log.read_text())
    one_line_error(code, err, f"reward 'digits' at rl step 2 on example {question[:60]!r}: {said}")
    assert time.time() - start < 30
    stage = straight / "runs" / name / "rl"
    assert latest_checkpoint(stage) == stage / "step_000001"  # verified: sizes and hashes as written
    assert not (stage / "step_000002").exists()
    assert digest(straight / "runs/k") == before


NUMERIC_FAULTS = {  # cued_adamw args -> what the one line says, at which step
    "loss-nan": ("poison_at: 3", "loss became nan at step 4"),
    "gradient-inf": ("bad_grad_at: 4, bad_value: inf", "the gradient norm became inf at step 4"),
    "gradient-nan": ("bad_grad_at: 4", "the gradient norm became nan at step 4"),
}


@pytest.mark.parametrize("args, said", NUMERIC_FAULTS.values(), ids=NUMERIC_FAULTS.keys())
def test_a_non_finite_loss_or_gradient_stops_naming_the_step_and_the_last_good_checkpoint(args, said, straight):
    """pretrain from the straight run's checkpoint, saving every 2 steps. A bad gradient at step 4 is caught
    before the update, so step 4's checkpoint is never written from poisoned weights."""
    before = digest(straight / "runs/k")
    name = "numeric-" + re.sub(r"\W+", "-", args)
    write_experiment(
        straight / f"{name}.yaml",
        {"pretrain": {"init": "runs/k/pretrain", **PRETRAIN, "steps": 6,
                      "optimizer": {"name": "cued_adamw", "args": {"lr": 0.005, **yaml.safe_load(f"{{{args}}}")}},
                      "save_every": 2}},
        name=name, seed=None, plugins=["./cues.py"])
    code, out, err = invoke(straight, "run", f"{name}.yaml")
    stage = straight / "runs" / name / "pretrain"
    one_line_error(code, err, f"stages.pretrain: {said}; the last good checkpoint is runs/{name}/pretrain/step_000002")
    assert sorted(p.name for p in stage.iterdir()) == ["step_000002"]
    state = weights(stage)
    assert all(torch.isfinite(t).all() for t in state.values())
    assert digest(straight / "runs/k") == before


# --------------------------------------------------------------------------- bad input, before any work

def experiment(name: str, stages: str, model: str = "{depth: 1, seq_len: 128, dtype: float32}") -> str:
    return f"name: {name}\ndevice: cpu\nplugins: [./cues.py]\nmodel: {model}\ntracking: {{enabled: false}}\n" \
           f"stages:\n{stages}"


def tokenizer_on(source: str, vocab: int = 512) -> str:
    return f"  tokenizer: {{vocab_size: {vocab}, data: {{source: {source}}}}}\n" \
           f"  pretrain: {{data: {{source: {source}}}, steps: 2, total_batch_tokens: 1024, device_batch_size: 8, " \
           f"optimizer: {{name: adamw}}}}\n"


def pretrain_on(source: str, optimizer: str = "{name: adamw}") -> str:
    return f"  pretrain: {{init: runs/k/pretrain, data: {{source: {source}}}, steps: 2, total_batch_tokens: 1024, " \
           f"device_batch_size: 8, optimizer: {optimizer}}}\n"


def rl_with(rollout: str, task: str = "{name: arithmetic, args: {size: 200}}") -> str:
    return f"  rl: {{init: runs/k/pretrain, task: {task}, rewards: [{{name: gsm8k}}], optimizer: {{name: adamw}}, " \
           f"rollout: {rollout}, steps: 2, examples_per_step: 2, eval: {{every: 0, examples: 2, k: 2}}}}\n"


GSM8K_ROWS = [{"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}, {"question": "What is 2 + 2?"}]
BAD_INPUT = {  # id: (stages, {file: text}, parts of the one-line error)
    "data-missing": (
        tokenizer_on("nope.txt"), {},
        ["stages.tokenizer.data.source: no such file or folder ", "nope.txt (a source is a task: "]),
    "data-missing-for-pretrain-after-a-good-tokenizer": (  # fails before the tokenizer stage trains
        tokenizer_on("arithmetic").replace("{source: arithmetic}, steps", "{source: ./corpus/nope.jsonl}, steps"), {},
        ["stages.pretrain.data.source: no such file or folder ", "corpus/nope.jsonl"]),
    "data-neither-task-nor-path-nor-hub": (
        tokenizer_on("no-such-hub-dataset-xyz"), {},
        ["stages.tokenizer.data.source: 'no-such-hub-dataset-xyz' is neither a task (", "nor an existing path"]),
    "data-empty-for-the-tokenizer": (
        tokenizer_on("empty.txt"), {"empty.txt": ""},
        ["stages.tokenizer.data: the training text is empty; point data.source at some text"]),
    "data-empty-for-pretrain": (
        pretrain_on("empty.txt"), {"empty.txt": "\n\n"},
        ["stages.pretrain.data.source: 'empty.txt' gave no text (split 'train')"]),
    "data-bad-json-on-line-3": (
        tokenizer_on("bad.jsonl"), {"bad.jsonl": '{"text": "one"}\n{"text": "two"}\n{"text": three}\n'},
        ["stages.tokenizer.data.source: ", "bad.jsonl:3: bad JSON", "one JSON object per line"]),
    "data-without-the-text-field": (
        pretrain_on("rows.jsonl"), {"rows.jsonl": '{"body": "one"}\n'},
        ["rows.jsonl:1: no string field 'text' (has ['body']); set stages.pretrain.data.text_field"]),
    "task-row-without-answer": (
        rl_with("{samples: 2, max_new_tokens: 8}", task="{name: gsm8k, args: {path: gsm}}"),
        {"gsm/train.jsonl": "".join(json.dumps(r) + "\n" for r in GSM8K_ROWS),
         "gsm/test.jsonl": json.dumps(GSM8K_ROWS[0]) + "\n"},
        ["stages.rl.task: ", "train.jsonl:2: missing field 'answer' (a GSM8K row needs string 'question' and "
                             "'answer')"]),
    "vocab-smaller-than-the-specials": (
        tokenizer_on("arithmetic", vocab=4), {},
        ["stages.tokenizer.vocab_size: 4 is too small", "at least 262 (256 byte tokens + 5 special tokens"]),
    "rollout-longer-than-seq_len": (
        rl_with("{samples: 2, max_new_tokens: 120}"), {},
        ["stages.rl.rollout.max_new_tokens: prompts reach", "exceed model.seq_len 128; use at most"]),
    "negative-learning-rate": (
        pretrain_on("arithmetic", optimizer="{name: adamw, args: {lr: -0.1}}"), {},
        ["stages.pretrain.optimizer.args: optimizer adamw: lr=-0.1 must be >= 0"]),
    "one-sample-for-grpo": (
        rl_with("{samples: 1, max_new_tokens: 8}"), {},
        ["stages.rl.rollout.samples: algorithm 'grpo' needs at least 2 samples per prompt (got 1)"]),
    "negative-top_k": (
        rl_with("{samples: 2, top_k: -1, max_new_tokens: 8}"), {},
        ["stages.rl.rollout.top_k: -1 must not be negative"]),
    "init-of-another-shape": (
        pretrain_on("arithmetic"), {},
        ["stages.pretrain.init: checkpoint runs/k/pretrain/step_000008 holds a gpt model with depth=1 but model.depth is 2; "
         "set model.depth=1"]),
}


@pytest.mark.parametrize("stages, files, parts", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_before_any_work(stages, files, parts, straight, request):
    before = digest(straight / "runs/k")
    name = "bad-" + request.node.callspec.id
    for file, text in files.items():
        (straight / file).parent.mkdir(parents=True, exist_ok=True)
        (straight / file).write_text(text)
    model = "{depth: 2, seq_len: 128, dtype: float32}" if name.endswith("shape") else \
        "{depth: 1, seq_len: 128, dtype: float32}"
    (straight / f"{name}.yaml").write_text(experiment(name, stages, model))
    code, out, err = invoke(straight, "run", f"{name}.yaml")
    one_line_error(code, err, *parts)
    assert not re.search(r"^\[\w+\] (step|vocab)", out, re.M), out  # nothing trained
    run_dir = straight / "runs" / name
    assert not (run_dir / "tokenizer").exists() and not list(run_dir.glob("*/step_*"))
    assert digest(straight / "runs/k") == before


def test_a_run_folder_moved_elsewhere_still_finds_its_tokenizer(straight, tmp_path):
    """A checkpoint's meta names its tokenizer folder relative to where it was trained; in a copy of the run
    somewhere else that path is gone, so `init:` falls back to the `tokenizer` folder of the copied run."""
    shutil.copytree(straight / "runs/k", tmp_path / "saved/k")
    shutil.copy(straight / "cues.py", tmp_path / "cues.py")
    (tmp_path / "moved.yaml").write_text(experiment("moved", rl_with("{samples: 2, max_new_tokens: 8}").replace(
        "runs/k/pretrain", "saved/k/pretrain")))
    code, out, err = invoke(tmp_path, "run", "moved.yaml")
    assert code == 0, out + err
    assert "starting from saved/k/pretrain/step_000008" in out
    assert (tmp_path / "runs/moved/rl/step_000002").is_dir()


# --------------------------------------------------------------------------- security

def test_yaml_is_data_only_and_the_ui_stays_on_this_machine(tmp_path):
    """A YAML tag that would build a Python object (here: run a shell command) is refused, in the file and on
    the command line; `rlkit ui` binds 127.0.0.1 unless told otherwise. (Checkpoints and tokenizers load
    without unpickling: tests/test_checkpoint.py and tests/test_tokenizer.py.)"""
    from rlkit.cli import ui

    setup_folder(tmp_path)
    (tmp_path / "evil.yaml").write_text('name: !!python/object/apply:os.system ["touch pwned"]\n')
    code, out, err = invoke(tmp_path, "check", "evil.yaml")
    one_line_error(code, err, "evil.yaml: YAML syntax error at line 1: could not determine a constructor for the tag")
    code, out, err = invoke(tmp_path, "check", "exp.yaml", 'seed=!!python/object/apply:os.system ["touch pwned"]')
    one_line_error(code, err, "seed: '!!python/object/apply:os.system")
    assert not (tmp_path / "pwned").exists()
    assert inspect.signature(ui).parameters["host"].default == "127.0.0.1"


def test_docs_name_only_tests_that_exist():
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs/reliability.md").read_text()
    names = set(re.findall(r"`(test_\w+)`", doc))
    source = "".join(p.read_text() for p in (root / "tests").glob("test_*.py"))
    assert len(names) >= 10 and not [n for n in names if f"def {n}(" not in source]
    cases = set(re.findall(r"`([a-z0-9_]+(?:-[a-z0-9_]+)+)`", doc))  # the table's case ids
    assert cases == set(BAD_INPUT), cases ^ set(BAD_INPUT)
