"""Sharded training: `parallel.strategy=fsdp` (FSDP2) under torchrun with 2 CPU ranks (gloo) equals one process.

One experiment: tokenizer, pretrain, sft, rl (grpo), rl_kl (deepseek_grpo: a frozen reference for its KL
term) and rl_dapo (dapo: group filtering with refills, so the ranks train unequal numbers of rows). Each is run once in one process (ddp, the default) and once with 2 fsdp ranks; the final weights of
every training stage agree to 1e-5 in fp32 after moving by more than 1e-2. Then each run's rl checkpoint is
resumed under the other strategy and world size (2 fsdp ranks -> 1 process, 1 process -> 2 fsdp ranks); the
fsdp run's checkpoints are each rank's own shards (rlkit.lib.training.sharded_checkpoint), which `rlkit eval`
and `rlkit export` read whole.
Batches take 2 accumulation passes per rank (fsdp skips the reduce-scatter on the first). AdamW's eps is
1e-4 here: at its default 1e-8 a gradient that is 0 in one run and 1e-12 in the other (the order of float
sums differs with the ranks) moves a weight by up to lr in one and not the other; DDP's 2 ranks then differ
from 1 process by 1e-3 after 2 pretrain steps, and so would any exact sharding.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from experiments import PRETRAIN, RL, SFT, TOKENIZER, data, experiment_text, task, without

from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow

DIGIT_REWARD = '''
import os
import pathlib
import time

import rlkit

@rlkit.hookimpl
def rlkit_rewards():
    return {"digit": digit}


def digit(completion, example):
    """Once the checkpoint RLKIT_TEST_HOLD_AFTER names exists, write the marker and wait to be killed: the next
    reward call after rl's step-1 save is inside rl step 2, however many trial calls came before."""
    hold = os.environ.get("RLKIT_TEST_HOLD_AFTER")
    if hold and pathlib.Path(hold).exists():
        pathlib.Path(os.environ["RLKIT_TEST_MARKER"]).write_text("reward")
        while True:
            time.sleep(0.02)
    return sum(c.isdigit() for c in completion) / 8


@rlkit.hookimpl(specname="rlkit_rewards")
def binary_rewards():
    return {"half_constant": half_constant}


def half_constant(completion, example):
    """The same for every sample of a problem with an even answer (dapo drops those groups and refills, so the
    ranks hold unequal rows), else the parity of the completion's digit count."""
    return 0.5 if example["value"] % 2 == 0 else float(sum(c.isdigit() for c in completion) % 2)
'''
def adamw(lr):
    return {"name": "adamw", "args": {"lr": lr, "eps": 1e-4}}


ROLLOUT = {"samples": 4, "temperature": 1.0, "top_k": 20, "max_new_tokens": 8}
RL_ENTRY = {**RL, "task": task(64), "rewards": [{"name": "digit"}], "optimizer": adamw(0.01), "rollout": ROLLOUT,
            "steps": 2, "examples_per_step": 4, "device_batch_size": 4, "init_lr_frac": 1.0, "save_every": 1,
            "eval": {"every": 0, "examples": 4, "k": 2}}
EXPERIMENT = experiment_text(
    {"tokenizer": without({**TOKENIZER, "vocab_size": 512, "data": data(400)}, "max_chars"),
     "pretrain": {**PRETRAIN, "data": data(400), "steps": 2, "device_batch_size": 2, "log_every": 1,
                  "optimizer": adamw(0.005)},
     "sft": {**SFT, "task": task(200), "device_batch_size": 2, "optimizer": adamw(0.01), "init_lr_frac": 1.0},
     "rl": {**RL_ENTRY, "algorithm": {"name": "grpo"}},
     "rl_kl": {**RL_ENTRY, "kind": "rl", "algorithm": {"name": "deepseek_grpo", "args": {"kl_coef": 0.5}}},
     "rl_dapo": {**RL_ENTRY, "kind": "rl", "algorithm": {"name": "dapo"}, "rewards": [{"name": "half_constant"}],
                 "steps": 3, "max_refills": 2}},
    name="f", seed=3, plugins=["./digit.py"],
    model={"depth": 2, "seq_len": 128, "dtype": "float32", "lambdas": False})  # lambdas: rlkit export needs none
STAGES = ("pretrain", "sft", "rl", "rl_kl", "rl_dapo")


def rlkit_run(folder, *args):
    out = subprocess.run([sys.executable, "-m", "rlkit", "run", "exp.yaml", *args], cwd=folder,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def printed(stdout, stage, key):
    return [float(m) for m in re.findall(rf"^\[{stage}\] step +\d+/\d+ \| .*?{key} (-?[\d.]+)", stdout, re.M)]


def weights(stage_dir):
    return load_checkpoint(latest_checkpoint(stage_dir))[0]


def assert_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=atol, msg=k)


def moved(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    (folder / "exp.yaml").write_text(EXPERIMENT)
    (folder / "digit.py").write_text(textwrap.dedent(DIGIT_REWARD))
    one = rlkit_run(folder, "run_dir=runs/one")
    two = rlkit_run(folder, "run_dir=runs/two", "parallel.strategy=fsdp", "--nproc-per-node", "2")
    return folder, one, two


def test_two_fsdp_ranks_equal_one_process(runs):
    folder, one, two = runs
    assert "world size 2" in two
    for stage, key, tol in (("pretrain", "loss", 2e-4), ("sft", "loss", 2e-4), ("rl", "reward", 2e-3),
                            ("rl_kl", "reward", 2e-3), ("rl_dapo", "reward", 2e-3)):
        a, b = printed(one, stage, key), printed(two, stage, key)
        assert len(a) in (2, 3) and b == pytest.approx(a, abs=tol), (stage, a, b)  # printed to 3-4 decimals
    for run in ("one", "two"):  # dapo filtered groups and refilled, so the ranks held unequal rows
        report = (folder / "runs" / run / "report.md").read_text()
        dropped = re.search(r"group filtering: ([\d.]+) groups dropped per step, ([\d.]+) refill rounds", report)
        assert dropped and float(dropped[1]) > 0 and float(dropped[2]) > 0, report
    for stage in STAGES:
        assert_close(weights(folder / "runs/one" / stage), weights(folder / "runs/two" / stage))
    final = {s: weights(folder / "runs/two" / s) for s in STAGES}
    for before, after in zip(STAGES, STAGES[1:]):
        assert moved(final[after], final[before]) > 1e-2, after  # each stage moved them: 1e-5 is not vacuous


def test_fsdp_checkpoints_are_sharded_and_eval_and_export_read_them(runs, tmp_path, cli, monkeypatch):
    """Under fsdp every rank wrote its own shards of the weights and optimizer state (no gather, no pickle);
    `rlkit eval` and `rlkit export` read them whole, as they read the one-process run's checkpoints."""
    folder, _, _ = runs
    for stage in STAGES:
        for step in (folder / "runs/two" / stage).glob("step_*"):
            names = sorted(str(p.relative_to(step)) for p in step.rglob("*") if p.is_file())
            assert names == ["meta.json", *(f"{part}/shard-0000{r}-model-00001-of-00001.safetensors"
                                            for part in ("model", "optimizer") for r in (1, 2))], (step, names)
        assert any((folder / "runs/one" / stage).glob("step_*/model.safetensors"))  # whole: one process
    monkeypatch.chdir(folder)  # the commands in this process: no second start-up of torch
    result = cli("eval", "runs/two", "--task", "arithmetic", "--json")  # its last entry, rl_dapo, as the run did
    (row,) = json.loads(result.stdout[result.stdout.index("["):])
    after = json.loads((folder / "runs/two/summary.json").read_text())["stages"]["rl_dapo"]["eval_after"]
    assert row["entry"] == "rl_dapo" and row["figures"] == {"pass@1": after["pass@1"], "pass@2": after["pass@2"]}
    for run in ("one", "two"):
        assert cli("export", f"runs/{run}/rl", tmp_path / run).exit_code == 0
    assert_close(*(load_file(tmp_path / run / "model.safetensors") for run in ("one", "two")))


@pytest.mark.parametrize("saved, resumed", [("two", ["--nproc-per-node", "1"]),
                                            ("one", ["parallel.strategy=fsdp", "--nproc-per-node", "2"])])
def test_checkpoint_resumes_under_the_other_strategy(runs, saved, resumed, tmp_path):
    """rl's step-1 checkpoint of one run continues under the other strategy and world size to the same end."""
    folder, _, _ = runs
    shutil.copytree(folder, tmp_path / "f")
    run = tmp_path / "f/runs" / saved
    shutil.rmtree(run / "rl/step_000002")
    shutil.rmtree(run / "rl_kl")
    shutil.rmtree(run / "rl_dapo")
    out = rlkit_run(tmp_path / "f", f"run_dir=runs/{saved}", "--resume", *resumed)
    assert "[rl] resuming at step 1" in out
    for stage in ("rl", "rl_kl", "rl_dapo"):
        assert_close(weights(folder / "runs/one" / stage), weights(run / stage))


def test_sigkill_in_an_fsdp_rl_step_then_resume_is_bit_identical(runs, tmp_path):
    """Both ranks SIGKILLed inside rl step 2 (its step-1 checkpoint saved), --resume under fsdp: the final rl,
    rl_kl and rl_dapo weights equal the straight fsdp run's bit for bit."""
    folder, _, _ = runs
    shutil.copytree(folder, tmp_path / "f")
    run, marker = tmp_path / "f/runs/two", tmp_path / "held"
    shutil.rmtree(run / "rl")
    shutil.rmtree(run / "rl_kl")
    shutil.rmtree(run / "rl_dapo")
    args = ["run", "exp.yaml", "run_dir=runs/two", "--resume", "parallel.strategy=fsdp", "--nproc-per-node", "2"]
    cues = {"RLKIT_TEST_HOLD_AFTER": str(run / "rl/step_000001"), "RLKIT_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", *args], cwd=tmp_path / "f", env={**os.environ, **cues},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "never held in rl step 2"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, as a crash would: its ranks must die with it
    proc.wait(timeout=30)
    deadline = time.time() + 3  # without the ranks' parent-death signal they lived ~11 s more, holding the lock
    while processes_in(tmp_path / "f") and time.time() < deadline:
        time.sleep(0.1)
    assert not processes_in(tmp_path / "f"), "the ranks outlived their launcher"
    assert latest_checkpoint(run / "rl").name == "step_000001"
    out = rlkit_run(tmp_path / "f", *args[2:])
    assert "[rl] resuming at step 1" in out
    for stage in ("rl", "rl_kl", "rl_dapo"):
        a, b = weights(folder / "runs/two" / stage), weights(run / stage)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


def processes_in(folder) -> list[int]:
    """Pids of the live processes whose working folder is `folder` (the run's ranks)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(folder) and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
                found.append(int(pid))
        except OSError:
            continue
    return found


def hf_experiment(model, lora):
    """sft then rl with a KL reference (deepseek_grpo) on the tiny random Llama (tests/hf_fixtures.py); with
    `lora`, the reference is the policy with its adapters off."""
    args = {"path": str(model), **({"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
                                   if lora else {})}
    return experiment_text(
        {"sft": {**SFT, "task": task(200), "device_batch_size": 4, "optimizer": adamw(0.02), "init_lr_frac": 1.0},
         "rl": {**RL_ENTRY, "task": task(200), "algorithm": {"name": "deepseek_grpo", "args": {"kl_coef": 0.5}},
                "optimizer": adamw(0.02)}},
        name="h", seed=3, plugins=["./digit.py"], model={"name": "hf", "args": args, "seq_len": 160,
                                                          "dtype": "float32"})


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_hf_llama_two_fsdp_ranks_equal_one_process(lora, tmp_path):
    from hf_fixtures import hf_model

    model = hf_model(tmp_path / "llama", "llama")
    (tmp_path / "exp.yaml").write_text(hf_experiment(model, lora))
    (tmp_path / "digit.py").write_text(textwrap.dedent(DIGIT_REWARD))
    one = rlkit_run(tmp_path, "run_dir=runs/one")
    two = rlkit_run(tmp_path, "run_dir=runs/two", "parallel.strategy=fsdp", "--nproc-per-node", "2")
    assert printed(two, "rl", "reward") == pytest.approx(printed(one, "rl", "reward"), abs=2e-3)
    for stage in ("sft", "rl"):
        assert_close(weights(tmp_path / "runs/one" / stage), weights(tmp_path / "runs/two" / stage))
    sft, rl = weights(tmp_path / "runs/two/sft"), weights(tmp_path / "runs/two/rl")
    assert moved(rl, sft) > 1e-2
    assert all("lora_" in k for k in rl) == lora  # LoRA: only the adapters trained and saved
