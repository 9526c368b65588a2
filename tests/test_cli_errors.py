"""Every user mistake ends as one line on stderr (exit 1, no traceback) that says where the
mistake is and what would be valid; `rlkit --debug` raises the same error with its traceback.

Each case writes an experiment (and plugin files) into tmp_path and runs the real CLI.
Only the built-in gsm8k reward and adamw optimizer are relied on; the rl-stage cases bring
their own toy task and algorithm in a local plugin file.
"""
import subprocess
import sys

import pytest

from rlkit.core.errors import RlkitError

PRETRAIN = """\
name: t
stages:
  pretrain:
    data: {source: data.txt}
    optimizer: {name: adamw}
"""

# A local plugin supplying the task and algorithm an rl stage needs, so rewards can be checked.
TOY = """\
import rlkit

@rlkit.hookimpl
def rlkit_tasks():
    return {"toy_task": toy_task}

@rlkit.hookimpl
def rlkit_algorithms():
    return {"toy_algo": toy_algo}

@rlkit.hookimpl
def rlkit_rewards():
    return {"short": short}

def toy_task(split, size=4):
    return []

def toy_algo():
    return None

def short(completion, example, max_chars=400):
    return -len(completion) / max_chars
"""


def rl(rewards: str, plugins: str = "[./toy.py]") -> str:
    return f"""\
name: t
plugins: {plugins}
stages:
  rl:
    task: {{name: toy_task}}
    algorithm: {{name: toy_algo}}
    optimizer: {{name: adamw}}
    rewards: {rewards}
"""


def hook_file(hook: str, names: str) -> str:
    return f"import rlkit\n\n@rlkit.hookimpl\ndef {hook}():\n    return {{{names}}}\n"


def assert_one_line_error(result, *parts):
    """Exit 1, nothing on stdout, one line on stderr containing every part, no traceback."""
    everything = result.output + result.stderr
    assert result.exit_code == 1, everything
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # nothing leaked
    assert "Traceback" not in everything
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: "), message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# id: (experiment text or None for "no file", {extra files}, extra CLI args, parts of the message)
CASES = {
    "yaml-syntax-error-with-line": (
        "name: t\nseed: 1\n  bad: 2\n", {}, [],
        ["experiment.yaml", "YAML syntax error", "line 3"]),
    "unknown-top-level-key": (
        "name: t\nsed: 1\n", {}, [],
        ["experiment.yaml", "sed", "no such key", "did you mean 'seed'?"]),
    "unknown-stage-key": (
        PRETRAIN + "    stepz: 3\n", {}, [],
        ["experiment.yaml", "stages.pretrain.stepz", "did you mean 'steps'?"]),
    "unknown-key-from-command-line": (
        PRETRAIN, {}, ["stages.pretrain.stepz=3"],
        ["stages.pretrain.stepz", "did you mean 'steps'?"]),
    "wrong-type": (
        "name: t\nseed: abc\n", {}, [],
        ["experiment.yaml", "seed", "'abc'", "is not an integer"]),
    "wrong-type-nested": (
        PRETRAIN + "    steps: many\n", {}, [],
        ["experiment.yaml", "stages.pretrain.steps", "'many'", "is not an integer"]),
    "wrong-type-from-command-line": (
        PRETRAIN, {}, ["seed=abc"],
        ["seed", "'abc'", "is not an integer"]),
    "missing-value-???": (
        "name: ???\n", {}, [],
        ["experiment.yaml", "name", "missing required value"]),
    "missing-name-key": (
        "seed: 1\n", {}, [],
        ["experiment.yaml", "name", "missing required value"]),
    "reward-without-name": (
        rl("[{weight: 1.0}]"), {"toy.py": TOY}, [],
        ["experiment.yaml", "stages.rl.rewards[0].name", "missing required value"]),
    "unknown-optimizer": (
        PRETRAIN.replace("adamw", "adamx"), {}, [],
        ["experiment.yaml", "stages.pretrain.optimizer.name", "'adamx'", "did you mean 'adamw'?", "available:",
         "adamw"]),
    "unknown-reward": (
        rl("[{name: gsm8kk}]"), {"toy.py": TOY}, [],
        ["stages.rl.rewards[0].name", "no reward plugin named 'gsm8kk'", "did you mean 'gsm8k'?", "short"]),
    "unknown-name-nothing-close": (
        PRETRAIN.replace("adamw", "zzzz"), {}, [],
        ["stages.pretrain.optimizer.name", "'zzzz'", "available:", "adamw"]),
    "plugin-file-missing": (
        PRETRAIN + "plugins: [./nope.py]\n", {}, [],
        ["experiment.yaml", "nope.py", "not found"]),
    "plugin-file-missing-on-command-line": (
        PRETRAIN, {}, ["--plugin", "nowhere/nope.py"],
        ["nope.py", "not found"]),
    "plugin-file-raises-on-import": (
        PRETRAIN + "plugins: [./broken.py]\n", {"broken.py": "import rlkit\nraise ValueError('boom here')\n"}, [],
        ["broken.py", "failed to import", "ValueError", "boom here"]),
    "plugin-file-syntax-error": (
        PRETRAIN + "plugins: [./broken.py]\n", {"broken.py": "def f(:\n"}, [],
        ["broken.py", "failed to import", "SyntaxError"]),
    "optimizer-arg-not-accepted": (
        PRETRAIN.replace("{name: adamw}", "{name: adamw, args: {lrr: 0.1}}"), {}, [],
        ["experiment.yaml", "stages.pretrain.optimizer.args", "adamw", "'lrr'", "it takes:", "lr="]),
    "reward-arg-not-accepted": (
        rl("[{name: gsm8k, args: {answer_kye: x}}]"), {"toy.py": TOY}, [],
        ["stages.rl.rewards[0].args", "'answer_kye'", "answer_key='answer'"]),
    "local-reward-arg-not-accepted": (
        rl("[{name: gsm8k}, {name: short, args: {max_len: 3}}]"), {"toy.py": TOY}, [],
        ["stages.rl.rewards[1].args", "reward 'short'", "'max_len'", "max_chars=400"]),
    "misspelled-hook": (
        PRETRAIN + "plugins: [./typo.py]\n", {"typo.py": hook_file("rlkit_reward", "'x': print")}, [],
        ["typo.py", "unknown hook 'rlkit_reward'", "did you mean 'rlkit_rewards'?"]),
    "name-defined-by-two-files": (
        PRETRAIN + "plugins: [./one.py, ./two.py]\n",
        {"one.py": hook_file("rlkit_rewards", "'dup': print"), "two.py": hook_file("rlkit_rewards", "'dup': print")},
        [], ["reward 'dup'", "two plugins", "one.py", "two.py"]),
    "name-clashes-with-built-in": (
        PRETRAIN + "plugins: [./mine.py]\n", {"mine.py": hook_file("rlkit_rewards", "'gsm8k': print")}, [],
        ["reward 'gsm8k'", "two plugins", "mine.py", "rlkit:"]),
}


@pytest.mark.parametrize("text, files, extra, parts", CASES.values(), ids=CASES.keys())
def test_user_error_is_one_line(cli, write_yaml, write_file, tmp_path, monkeypatch, text, files, extra, parts):
    monkeypatch.chdir(tmp_path)  # so `--plugin nowhere/nope.py` is relative to a known place
    for name, content in files.items():
        write_file(name, content)
    experiment = write_yaml(text)
    assert_one_line_error(cli("check", experiment, *extra), *parts)


SHAPE_ERRORS = [
    pytest.param(rl("[{name: gsm8k, weight: heavy}]"), ["stages.rl.rewards[0].weight", "'heavy'", "is not a number"],
                 id="wrong-type-in-list-item"),
    pytest.param(rl("[{name: gsm8k, args: 3}]"), ["stages.rl.rewards[0].args"],
                 id="args-not-a-mapping-in-list-item"),
    pytest.param(rl("{name: gsm8k}"), ["stages.rl.rewards", "list"],
                 id="mapping-where-list-expected"),
    pytest.param("name: t\nmodel: 5\n", ["experiment.yaml: model"],
                 id="scalar-where-section-expected"),
]


@pytest.mark.parametrize("text, parts", SHAPE_ERRORS)
def test_shape_error_names_full_key(cli, write_yaml, write_file, text, parts):
    write_file("toy.py", TOY)
    assert_one_line_error(cli("check", write_yaml(text)), *parts)


def test_experiment_file_missing(cli, tmp_path):
    assert_one_line_error(cli("check", tmp_path / "nope.yaml"), "nope.yaml", "not found")
    assert_one_line_error(cli("run", tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_plugins_command_with_missing_file(cli, tmp_path):
    assert_one_line_error(cli("plugins", "--plugin", tmp_path / "nope.py"), "nope.py", "not found")


def test_valid_experiment_passes_check(cli, write_yaml, write_file):
    write_file("data.txt", "Some text to pretrain on.\n")  # check looks for local data files
    result = cli("check", write_yaml(PRETRAIN))
    assert result.exit_code == 0, result.stderr
    assert "optimizer:" in result.stdout and "name: adamw" in result.stdout
    assert "ok: stages pretrain" in result.stderr


@pytest.mark.parametrize("text, files, extra, parts", [CASES["unknown-stage-key"], CASES["misspelled-hook"],
                                                       CASES["optimizer-arg-not-accepted"]],
                         ids=["config", "plugin", "args"])
def test_debug_raises_the_same_error(cli, write_yaml, write_file, text, files, extra, parts):
    for name, content in files.items():
        write_file(name, content)
    experiment = write_yaml(text)
    result = cli("--debug", "check", experiment, *extra)
    assert result.exit_code == 1
    assert isinstance(result.exception, RlkitError)  # raised, not turned into a one-line exit
    assert result.exc_info[2] is not None
    assert all(part in str(result.exception) for part in parts)
    assert "error: " not in result.stderr


def test_debug_prints_traceback_in_a_real_process(tmp_path):
    missing = tmp_path / "nope.yaml"
    plain = subprocess.run([sys.executable, "-m", "rlkit", "check", str(missing)], capture_output=True, text=True)
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr + plain.stdout
    assert plain.stderr.strip() == f"error: {missing}: experiment file not found"
    debug = subprocess.run([sys.executable, "-m", "rlkit", "--debug", "check", str(missing)],
                           capture_output=True, text=True)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert "RlkitError" in debug.stderr and "not found" in debug.stderr
