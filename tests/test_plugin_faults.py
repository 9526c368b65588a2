"""A fault in any kind of plugin is one line naming the plugin, the hook or method, and what was expected,
found by `rlkit check` where the contract can be checked up front (the real CLI in a subprocess)."""
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlkit.core.checkpoint import latest_checkpoint

from experiments import PRETRAIN, RL, TOKENIZER, experiment_text

def faults_experiment(plugin: str, optimizer: str) -> str:
    """Run faults: one pretrain entry with the local `plugin` file and the `optimizer` it may supply."""
    return experiment_text({"pretrain": {"data": {"source": "arithmetic"}, "optimizer": {"name": optimizer}}},
                           name="faults", seed=None, device=None, tracking=None, plugins=[f"./{plugin}"],
                           model={"depth": 1, "seq_len": 64})

FAULTS = {  # name: (plugin file name, its text, optimizer used, what the one line must say)
    "hook-raises": ("bad.py", """
        import rlkit
        @rlkit.hookimpl
        def rlkit_rewards():
            raise ValueError("boom")
        """, "adamw", "bad.py: rlkit_rewards() raised ValueError: boom"),
    "sys-exit-at-import": ("bad.py", "import sys\nsys.exit(3)\n", "adamw", "bad.py: failed to import: SystemExit: 3"),
    "ctrl-c-at-import": ("bad.py", "raise KeyboardInterrupt\n", "adamw", "bad.py: failed to import: KeyboardInterrupt"),
    "not-a-py-file": ("bad.txt", "import rlkit\n", "adamw",
                      "bad.txt: not a .py file; a local plugin is a Python module ending in .py"),
    "optimizer-returns-none": ("bad.py", """
        import rlkit
        @rlkit.hookimpl
        def rlkit_optimizers():
            return {"nothing": lambda model: None}
        """, "nothing", "stages.pretrain.optimizer: plugin 'nothing' returned NoneType; an optimizer factory must "
                        "return a torch.optim.Optimizer"),
    "hook-returns-a-list": ("bad.py", """
        import rlkit
        @rlkit.hookimpl
        def rlkit_tasks():
            return ["arith"]
        """, "adamw", "rlkit_tasks() must return a dict {name: callable}, got list"),
}


@pytest.mark.parametrize("plugin, text, optimizer, said", FAULTS.values(), ids=FAULTS.keys())
def test_a_faulty_plugin_is_one_line_in_rlkit_check(plugin, text, optimizer, said, tmp_path):
    (tmp_path / plugin).write_text(textwrap.dedent(text))
    (tmp_path / "exp.yaml").write_text(faults_experiment(plugin, optimizer))
    out = subprocess.run([sys.executable, "-m", "rlkit", "check", "exp.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_names_that_differ_only_in_case_get_a_warning(tmp_path):
    (tmp_path / "shout.py").write_text(textwrap.dedent("""
        import rlkit
        @rlkit.hookimpl
        def rlkit_rewards():
            return {"GSM8K": lambda completion, example: 0.0}
        """))
    out = subprocess.run([sys.executable, "-m", "rlkit", "plugins", "--plugin", "shout.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "warning: reward plugins 'gsm8k' and 'GSM8K' differ only in case" in out.stderr


# --------------------------------------------------------------------------- an algorithm's own faults

ALGORITHM = '''\
"""Test-only: grpo's formulas, misbehaving as `fault` says on call `at_call` of `method` (counted per object,
so the instance `rlkit check` builds fails on call 1 and the run's own on call 2, i.e. at rl step 2)."""
import rlkit


class Faulty:
    min_samples = 2

    def __init__(self, fault="", method="loss", at_call=0):
        self.fault, self.method, self.at_call, self.calls = fault, method, at_call, {"advantages": 0, "loss": 0}
        self.zero_advantage_inert = fault == "inert"  # a false claim: its loss below has an entropy-like term

    def now(self, method):
        self.calls[method] += 1
        return self.method == method and self.calls[method] == self.at_call

    def advantages(self, rewards):
        adv = rewards - rewards.mean(dim=1, keepdim=True)
        if self.now("advantages"):
            if self.fault == "raise":
                raise ValueError("cannot centre")
            if self.fault == "shape":
                return adv.mean(dim=1)
        return adv

    def loss(self, logp, mask, adv, extra):
        loss = -(logp * mask * adv[:, None]).sum() / extra["num_tokens"]
        if self.fault == "inert":
            return loss + 0.01 * (logp * mask).sum() / extra["num_tokens"]
        if self.now("loss"):
            if self.fault == "raise":
                raise ValueError("cannot sum")
            return {"float": float(loss.detach()), "per-token": -(logp * mask * adv[:, None]), "nan": loss * float("nan"),
                    "detached": loss.detach()}[self.fault]
        return loss


@rlkit.hookimpl
def rlkit_algorithms():
    return {"faulty": Faulty, "nothing": lambda: None}
'''

BASE = experiment_text({"tokenizer": TOKENIZER,
                        "pretrain": {**PRETRAIN, "steps": 2, "optimizer": {"name": "adamw"}}},
                       name="base", seed=None)

def rl_experiment(name: str, algorithm: str, args: dict) -> str:
    """Run `name`: rl from runs/base/pretrain with the local algo.py plugin's `algorithm` built with `args`."""
    return experiment_text(
        {"rl": {"init": "runs/base/pretrain", **RL, "algorithm": {"name": algorithm, "args": args},
                "optimizer": {"name": "adamw"}, "rollout": {"samples": 4, "max_new_tokens": 8}, "steps": 3,
                "device_batch_size": 8, "save_every": 1, "eval": {"every": 0, "examples": 2, "k": 2}}},
        name=name, seed=None, plugins=["./algo.py"])


def cli(folder, *args):
    return subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line(out, said):
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished tokenizer + pretrain run (runs/base) that each rl case starts from."""
    folder = tmp_path_factory.mktemp("algo")
    (folder / "base.yaml").write_text(BASE)
    (folder / "algo.py").write_text(ALGORITHM)
    out = cli(folder, "run", "base.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    return folder


ALGORITHM_FAULTS = {  # id: (method, fault, what the line says after "algorithm 'faulty' <method>() <where>")
    "advantages-raises": ("advantages", "raise", " raised ValueError: cannot centre"),
    "advantages-of-the-wrong-shape": ("advantages", "shape", " returned a tensor of shape (2,); expected the "
                                                             "rewards' shape (P prompts, G samples) (2, 4)"),
    "loss-raises": ("loss", "raise", " raised ValueError: cannot sum"),
    "loss-not-a-tensor": ("loss", "float", " returned float; expected a scalar tensor computed from logp"),
    "loss-not-a-scalar": ("loss", "per-token", " returned a tensor of shape (8, "),
    "loss-not-finite": ("loss", "nan", " returned nan from finite log-probs and advantages; expected finite values"),
    "loss-without-gradient": ("loss", "detached", " returned a loss with no gradient; expected one computed from logp"),
}


@pytest.mark.parametrize("method, fault, said", ALGORITHM_FAULTS.values(), ids=ALGORITHM_FAULTS.keys())
def test_a_faulty_algorithm_stops_the_run_naming_plugin_method_and_step(method, fault, said, base, request):
    """The fault comes at rl step 2 (it passes `rlkit check`): one line, step 1's checkpoint still whole,
    no step 2, the pretrain run it started from byte-identical."""
    name = request.node.callspec.id
    before = digest(base / "runs/base")
    (base / f"{name}.yaml").write_text(rl_experiment(name, "faulty", {"fault": fault, "method": method, "at_call": 2}))
    out = cli(base, "run", f"{name}.yaml")
    one_line(out, f"error: stages.rl.algorithm: algorithm 'faulty' {method}() at rl step 2{said}")
    stage = base / "runs" / name / "rl"
    assert latest_checkpoint(stage) == stage / "step_000001"  # verified: sizes and hashes as written
    assert not (stage / "step_000002").exists()
    assert digest(base / "runs/base") == before


CHECKED_UP_FRONT = {  # id: (algorithm, args, what the line says)
    "factory-returns-none": ("nothing", {}, "stages.rl.algorithm: plugin 'nothing' returned NoneType without "
                                            "advantages() and loss(); an algorithm factory must return an object"),
    "advantages-of-the-wrong-shape": ("faulty", {"fault": "shape", "method": "advantages", "at_call": 1},
                                      "algorithm 'faulty' advantages() on a tiny batch in the check returned a tensor "
                                      "of shape (2,); expected the rewards' shape"),
    "loss-not-a-scalar": ("faulty", {"fault": "per-token", "method": "loss", "at_call": 1},
                          "algorithm 'faulty' loss() on a tiny batch in the check returned a tensor of shape (8, 3)"),
    "claims-zero-advantage-inert": ("faulty", {"fault": "inert"},
                                    "algorithm 'faulty' loss() on a tiny batch in the check: the algorithm sets "
                                    "zero_advantage_inert = True, but its loss gives a row whose advantage is 0 a "
                                    "gradient"),
}


@pytest.mark.parametrize("algorithm, args, said", CHECKED_UP_FRONT.values(), ids=CHECKED_UP_FRONT.keys())
def test_an_algorithms_contract_is_checked_by_rlkit_check(algorithm, args, said, base, request):
    name = "check-" + request.node.callspec.id
    (base / f"{name}.yaml").write_text(rl_experiment(name, algorithm, args))
    one_line(cli(base, "check", f"{name}.yaml"), said)
    assert not (base / "runs" / name).exists()
