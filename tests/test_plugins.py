"""Plugins are found the three ways a user adds them, through the real plugin manager and CLI:
a local file named in the YAML (relative to the YAML) or with --plugin, and an installed
package's entry point in group `rlkit` (narrowed by RLKIT_LOAD_PLUGINS).

The installed package is faked without installing anything: a `fakepkg-1.0.dist-info` folder
on sys.path is all importlib.metadata needs to see a distribution and its entry points.
"""
import gc
import importlib
import json
import os
import subprocess
import sys

import pytest
from pathlib import Path

from rlkit.core.plugins import load_plugins

REWARD = """\
import rlkit

@rlkit.hookimpl
def rlkit_rewards():
    return {"short": short}

def short(completion, example, max_chars=400):
    return -len(completion) / max_chars
"""

# the rest of what an rl stage needs, with names no built-in will take
TOY = """\
import rlkit

@rlkit.hookimpl
def rlkit_tasks():
    # one example: `rlkit check` builds the task's rows and tries the reward on it
    return {"toy_task": lambda split: [{"messages": [{"role": "user", "content": "1 + 1?"},
                                                     {"role": "assistant", "content": "#### 2"}], "answer": "#### 2"}]}

class ToyAlgo:  # mean-shifted REINFORCE: what `rlkit check` now calls once on a tiny batch
    def advantages(self, rewards):
        return rewards - rewards.mean(dim=1, keepdim=True)

    def loss(self, logp, mask, adv, extra):
        return -(logp * mask * adv[:, None]).sum() / mask.sum().clamp(min=1)

@rlkit.hookimpl
def rlkit_algorithms():
    return {"toy_algo": ToyAlgo}
"""

EXPERIMENT = """\
name: local-plugin
plugins: [./plugins/my_reward.py, ./plugins/toy.py]
stages:
  rl:
    task: {name: toy_task}
    algorithm: {name: toy_algo}
    optimizer: {name: adamw}
    rewards:
      - {name: gsm8k}
      - {name: short, weight: 0.1, args: {max_chars: 100}}
"""


def test_local_file_from_yaml_is_relative_to_the_yaml(cli, write_file, write_yaml, tmp_path, monkeypatch):
    write_file("exp/plugins/my_reward.py", REWARD)
    write_file("exp/plugins/toy.py", TOY)
    experiment = write_yaml(EXPERIMENT, name="exp/local.yaml")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder: paths must resolve against the YAML

    result = cli("check", experiment)
    assert result.exit_code == 0, result.stderr
    assert "name: short" in result.stdout and "max_chars: 100" in result.stdout
    assert "ok: stages rl" in result.stderr


def test_local_file_with_plugin_option(cli, write_file):
    path = write_file("my_reward.py", REWARD)
    result = cli("plugins", "--plugin", path)
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(str(path)))
    assert "reward: short" in line
    assert any("reward: gsm8k" in line for line in result.stdout.splitlines())  # built-ins still there

    rows = json.loads(cli("plugins", "--json", "--plugin", path).stdout)
    mine = [row for row in rows if row["plugin"] == str(path)]
    assert mine == [{"plugin": str(path), "source": "file", "provides": {"reward": ["short"]}}]


def test_local_file_reward_is_callable_through_the_tables(write_file):
    found = load_plugins([write_file("my_reward.py", REWARD)])
    short = found.get("reward", "short", "test")
    assert short("x" * 40, {}, max_chars=400) == pytest.approx(-0.1)


def test_plugins_json_lists_the_built_ins(cli, monkeypatch):
    monkeypatch.setenv("RLKIT_LOAD_PLUGINS", "")  # only rlkit's own
    assert gc.isenabled()
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.stderr
    assert gc.isenabled()  # a short-lived command run in-process gives the collector back (rlkit/cli/quick.py)
    rows = json.loads(result.stdout)
    assert {"plugin", "source", "provides"} <= set(rows[0])
    provided = {(kind, name) for row in rows for kind, names in row["provides"].items() for name in names}
    assert {("reward", "gsm8k"), ("optimizer", "adamw")} <= provided
    assert all(row["source"].startswith("rlkit ") for row in rows)



ROOT = Path(__file__).resolve().parents[1]

def imported(args: list[str], cwd=None) -> set[str]:
    """The modules `rlkit ARGS` imports, from `python -X importtime` (check and plugins end the process with
    os._exit, so nothing can run after their main())."""
    env = dict(os.environ, RLKIT_LOAD_PLUGINS="", HF_HUB_OFFLINE="1")  # rlkit's own: another package may import anything
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "rlkit", *args], capture_output=True, text=True,
                         env=env, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--help"], ["plugins"]])
def test_light_commands_import_no_torch(args):
    """`rlkit --help` and `rlkit plugins` load every built-in plugin module without torch: networks, training
    loops and optimizers are imported when used (docs/performance.md has what that saves)."""
    modules = imported(args)
    assert "rlkit.plugins.rewards.gsm8k" in modules or args == ["--help"]
    assert not modules & {"torch", "transformers"}


def test_check_builds_no_network_and_skips_torch_dynamo(tmp_path):
    """`rlkit check` needs torch (it tries every algorithm and optimizer on a stand-in), but neither
    torch._dynamo (~1.2 s: optim.py's trial skips its import) nor a network (gpt_config.py counts parameters);
    the optimizer's later real construction still gets torch's dynamo-disabled add_param_group."""
    modules = imported(["check", str(ROOT / "experiments" / "quickstart.yaml")], cwd=tmp_path)
    assert "torch" in modules
    assert not modules & {"transformers", "torch._dynamo", "rlkit.plugins.models.gpt_model"}


def test_check_and_plugins_exit_at_once_with_their_output_and_status(tmp_path):
    """check and plugins end by os._exit (no interpreter teardown): everything printed still arrives through a
    pipe, a plugin's own print() and atexit function included, and a user's mistake still exits 1 with its one
    line."""
    run = [sys.executable, "-m", "rlkit"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe buffers stdout, as for most users
    env["HF_HUB_OFFLINE"] = "1"
    chatty = tmp_path / "chatty.py"
    chatty.write_text("import atexit\nimport rlkit\nprint('chatty plugin loaded')\natexit.register(print, 'chatty atexit')\n"
                      "\n\n@rlkit.hookimpl\ndef rlkit_rewards():\n    return {'chatty': lambda completion, example: 0.0}\n")
    ok = subprocess.run([*run, "check", str(ROOT / "experiments" / "quickstart.yaml"), "--plugin", str(chatty)],
                        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("chatty plugin loaded\nname: quickstart\n") and "\nstages:\n" in ok.stdout
    assert ok.stdout.endswith("\nchatty atexit\n")  # the plugin's atexit function ran, its output arrived
    assert ok.stderr.splitlines()[-1].startswith("# ok: stages tokenizer, pretrain")
    bad = subprocess.run([*run, "check", str(ROOT / "experiments" / "quickstart.yaml"), "stages.rl.steps=0",
                          "--plugin", str(chatty)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "stages.rl.steps" in bad.stderr
    assert bad.stdout == "chatty plugin loaded\nchatty atexit\n"  # printed before the error, and at exit
    listed = subprocess.run([*run, "plugins", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and json.loads(listed.stdout)


def test_the_optimizer_trial_leaves_torchs_dynamo_wrapper_as_it_was():
    import torch

    from rlkit.lib.training import optim

    original = torch.optim.Optimizer.add_param_group.__wrapped__
    before = getattr(original, "__dynamo_disable", None)
    with optim._without_dynamo_import():
        torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    assert getattr(original, "__dynamo_disable", None) is before

# --- an installed package, faked -------------------------------------------------------------

FAKE_MODULE = """\
import rlkit

@rlkit.hookimpl
def rlkit_rewards():
    return {"fake_reward": fake_reward}

def fake_reward(completion, example, bonus=1.0):
    return bonus
"""


@pytest.fixture
def fake_installed(tmp_path, monkeypatch):
    """A distribution `fakepkg` 1.0 whose entry point `fake` (group rlkit) is fake_plugin_mod."""
    dist = tmp_path / "site" / "fakepkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rlkit]\nfake = fake_plugin_mod\n")
    (tmp_path / "site" / "fake_plugin_mod.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("RLKIT_LOAD_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield
    sys.modules.pop("fake_plugin_mod", None)


def names(found, kind):
    return set(found.tables[kind])


def test_entry_point_of_an_installed_package_loads(fake_installed):
    found = load_plugins()
    assert found.get("reward", "fake_reward", "test")("anything", {}, bonus=2.5) == 2.5
    info = next(i for i in found.infos if i.name == "fakepkg:fake")
    assert info.source == "fakepkg 1.0"
    assert info.provides == {"reward": ["fake_reward"]}
    assert {"gsm8k"} <= names(found, "reward") and "adamw" in names(found, "optimizer")


def test_entry_point_shows_in_plugins_command(fake_installed, cli):
    result = cli("plugins")
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("fakepkg:fake"))
    assert "fakepkg 1.0" in line and "reward: fake_reward" in line


@pytest.mark.parametrize("allowed, visible", [("", False), ("fakepkg", True), ("other,fakepkg", True),
                                              ("other", False)])
def test_rlkit_load_plugins_narrows_installed_packages(fake_installed, monkeypatch, allowed, visible):
    monkeypatch.setenv("RLKIT_LOAD_PLUGINS", allowed)
    found = load_plugins()
    assert ("fake_reward" in names(found, "reward")) is visible
    assert "gsm8k" in names(found, "reward") and "adamw" in names(found, "optimizer")  # built-ins regardless


def test_broken_entry_point_is_one_named_error(fake_installed, tmp_path):
    from rlkit.core.errors import RlkitError

    (tmp_path / "site" / "fake_plugin_mod.py").write_text("raise ImportError('needs libfoo')\n")
    with pytest.raises(RlkitError, match=r"fakepkg:fake .*fake_plugin_mod.* ImportError: needs libfoo"):
        load_plugins()


def test_trace_plugins_prints_hook_calls(write_file, monkeypatch, capsys):
    monkeypatch.setenv("RLKIT_TRACE_PLUGINS", "1")
    load_plugins([write_file("my_reward.py", REWARD)])
    err = capsys.readouterr().err
    assert "rlkit_rewards" in err and "short" in err


def test_names_that_moved_out_of_plugin_modules_still_import_from_there():
    """The networks moved to their own modules (so `rlkit plugins` imports no torch); a user's
    `from rlkit.plugins.models.gpt import GPT` keeps working, and gets the same class."""
    from rlkit.plugins.models import gpt, gpt_model, hf, hf_policy
    from rlkit.plugins.optimizers import muon, muon_optimizer

    assert gpt.GPT is gpt_model.GPT and gpt.GPTConfig is gpt_model.GPTConfig and hf.HFPolicy is hf_policy.HFPolicy
    assert muon.MuonAdamW is muon_optimizer.MuonAdamW and muon.orthogonalize is muon_optimizer.orthogonalize
    with pytest.raises(AttributeError):
        gpt.Nothing  # noqa: B018
