"""Scale: the same experiment under torchrun (2 CPU ranks, gloo) matches 1 process.

Each test launches real processes through `rlkit run ... --nproc-per-node 2`, the command a user
types. An optimizer plugin file (loaded through the real plugin manager) wraps `adamw` and, after
every step, compares a checksum of every parameter across ranks and records it.
"""
import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from experiments import EVAL, PRETRAIN, RL, TOKENIZER, data, experiment_text, task, without

pytestmark = pytest.mark.slow

CHECKED_OPTIMIZER = '''
import json, os
import torch
import torch.distributed as dist
import rlkit
from rlkit.plugins.optimizers.adamw import adamw


@rlkit.hookimpl
def rlkit_optimizers():
    return {"checked_adamw": checked_adamw}


def checked_adamw(model, log="sync.jsonl", **args):
    opt = adamw(model, **args)
    step = opt.step

    def checked_step(*a, **k):
        out = step(*a, **k)
        with torch.no_grad():
            sums = torch.stack([p.double().sum() for p in model.parameters()])
        world = dist.get_world_size() if dist.is_initialized() else 1
        gathered = [torch.empty_like(sums) for _ in range(world)]
        if world > 1:
            dist.all_gather(gathered, sums)
        else:
            gathered = [sums]
        same = all(torch.equal(gathered[0], g) for g in gathered)
        if int(os.environ.get("RANK", 0)) == 0:
            with open(log, "a") as f:
                f.write(json.dumps({"world": world, "identical": same}) + "\\n")
        return out

    opt.step = checked_step
    return opt
'''

CHECKED_ADAMW = {"name": "checked_adamw", "args": {"lr": 0.003}}
SAMPLED = {"temperature": 1.0, "top_k": 20, "max_new_tokens": 8}
EXPERIMENT = experiment_text(
    {"tokenizer": without({**TOKENIZER, "vocab_size": 512, "data": data(400)}, "max_chars"),
     "pretrain": {**PRETRAIN, "data": data(400), "device_batch_size": 4, "optimizer": CHECKED_ADAMW,
                  "eval_tokens": 512, "log_every": 1, "save_every": 2},
     "rl": {**RL, "task": task(64), "algorithm": {"name": "grpo"}, "rewards": [{"name": "digit"}],
            "optimizer": CHECKED_ADAMW, "rollout": {"samples": 4, **SAMPLED}, "steps": 3, "examples_per_step": 4,
            "init_lr_frac": 1.0, "eval": {"every": 0, "examples": 4, "k": 2, "reward": {"name": "digit"}}},
     "eval_rl": {**EVAL, "tasks": [{**task(64), "k": 3, **SAMPLED, "reward": "digit"}]}},
    name="ddp", seed=3, device=None, plugins=["./checked.py", "./digit.py"])

DIGIT_REWARD = '''
import rlkit


@rlkit.hookimpl
def rlkit_rewards():
    return {"digit": digit}


def digit(completion, example):
    return sum(c.isdigit() for c in completion) / 8
'''


def rlkit_run(tmp_path, *args):
    cmd = [sys.executable, "-m", "rlkit", "run", "exp.yaml", *args]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def metrics(stdout, stage, key):
    return [float(m) for m in re.findall(rf"\[{stage}\] step +\d+/\d+ \| .*?{key} (-?[\d.]+)", stdout)]


@pytest.fixture
def experiment(tmp_path):
    (tmp_path / "checked.py").write_text(textwrap.dedent(CHECKED_OPTIMIZER))
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "digit.py").write_text(DIGIT_REWARD)
    return tmp_path


def test_two_ranks_match_one(experiment):
    one = rlkit_run(experiment, "run_dir=runs/one")
    two = rlkit_run(experiment, "run_dir=runs/two", "--nproc-per-node", "2")
    assert "world size 2" in two
    loss1, loss2 = metrics(one, "pretrain", "loss"), metrics(two, "pretrain", "loss")
    assert len(loss1) == len(loss2) == 4
    assert loss2 == pytest.approx(loss1, abs=2e-4)  # printed to 4 decimals
    reward1, reward2 = metrics(one, "rl", "reward"), metrics(two, "rl", "reward")
    assert len(reward1) == len(reward2) == 3
    assert reward2 == pytest.approx(reward1, abs=2e-3)  # same rollouts: per-row seeds
    # held-out evals, before and after, with the paired change: ranks score disjoint problems, sums all-reduced
    evals = r"eval at step (\d+): pass@1 ([\d.]+)(?: \(([-+][\d.]+) ± ([\d.]+) vs step 0\))?"
    assert len(re.findall(evals, one)) == 2 and re.findall(evals, two) == re.findall(evals, one)
    # the eval stage: ranks score disjoint problems, sums all-reduced
    stage_eval = r"\[eval_rl\] arithmetic: (.*)"
    assert len(re.findall(stage_eval, one)) == 1 and re.findall(stage_eval, two) == re.findall(stage_eval, one)
    records = [json.loads(line) for line in (experiment / "sync.jsonl").read_text().splitlines()]
    two_rank = [r for r in records if r["world"] == 2]
    assert len(two_rank) == 7 and all(r["identical"] for r in two_rank)  # 4 pretrain + 3 rl steps


def rlkit_eval(folder, *args, nproc=1):
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launch, "-m", "rlkit", "eval", *args, "--json"]
    out = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("["):])


def test_rlkit_eval_repeats_the_rl_stage_final_eval_on_one_rank_and_two(experiment):
    rlkit_run(experiment, "run_dir=runs/one", "stages.eval_rl=null")
    after = json.loads((experiment / "runs/one/summary.json").read_text())["stages"]["rl"]["eval_after"]
    (one,) = rlkit_eval(experiment, "runs/one", "--task", "arithmetic")  # the run's settings: rl's
    (two,) = rlkit_eval(experiment, "runs/one", "--task", "arithmetic", nproc=2)
    assert one["entry"] == "rl" and one["figures"] == {"pass@1": after["pass@1"], "pass@2": after["pass@2"]}
    assert two["figures"] == one["figures"] and 0 < after["pass@2"]
    # more problems than the stage used, by --examples, sharded over two ranks: still the same
    (many1,) = rlkit_eval(experiment, "runs/one", "--task", "arithmetic:3", "--examples", "9")
    (many2,) = rlkit_eval(experiment, "runs/one", "--task", "arithmetic:3", "--examples", "9", nproc=2)
    assert many1["problems"] == 9 and many2["figures"] == many1["figures"] and "pass@3" in many1["figures"]


def test_two_rank_checkpoint_resumes_in_one(experiment):
    two = rlkit_run(experiment, "run_dir=runs/two", "--nproc-per-node", "2", "stages.rl.steps=1")
    # drop the final checkpoint: the run now looks interrupted after step 2 of 4
    pretrain = experiment / "runs/two/pretrain"
    shutil.rmtree(pretrain / "step_000004")
    shutil.rmtree(experiment / "runs/two/rl")
    resumed = rlkit_run(experiment, "run_dir=runs/two", "--resume", "stages.rl.steps=1")
    assert "resuming at step 2" in resumed
    assert metrics(resumed, "pretrain", "loss") == pytest.approx(metrics(two, "pretrain", "loss")[2:], abs=2e-4)


def test_batch_that_does_not_divide_fails_before_work(experiment):
    out = subprocess.run([sys.executable, "-m", "rlkit", "run", "exp.yaml", "--nproc-per-node", "2",
                          "stages.pretrain.total_batch_tokens=1536"],
                         cwd=experiment, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages.pretrain.total_batch_tokens: 1536" in lines[0] and "1024" in lines[0]
    assert not (experiment / "runs").exists()


def test_two_ranks_match_one_with_group_filtering_and_several_updates(experiment):
    """dapo drops the groups whose digit rewards are all equal, so the ranks keep different numbers of rows
    (a rank short of micro-batches runs an empty one); 2 epochs x 2 minibatches: 4 optimizer steps a step."""
    args = ["stages.rl.algorithm.name=dapo", "stages.rl.updates.epochs=2", "stages.rl.updates.minibatches=2",
            "stages.rl.device_batch_size=2", "stages.pretrain.steps=2", "stages.pretrain.save_every=0"]
    one = rlkit_run(experiment, "run_dir=runs/one", *args)
    two = rlkit_run(experiment, "run_dir=runs/two", "--nproc-per-node", "2", *args)
    reward1, reward2 = metrics(one, "rl", "reward"), metrics(two, "rl", "reward")
    assert len(reward1) == len(reward2) == 3
    assert reward2 == pytest.approx(reward1, abs=2e-3)
    records = [json.loads(line) for line in (experiment / "sync.jsonl").read_text().splitlines()]
    two_rank = [r for r in records if r["world"] == 2]
    assert len(two_rank) >= 2 + 3 * 4 and all(r["identical"] for r in two_rank)  # rl: 4 updates per step
