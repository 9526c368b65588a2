"""A fault in any kind of plugin is one line naming the plugin, the hook or method, and what was expected,
found by `rlkit check` where the contract can be checked up front (the real CLI in a subprocess)."""
import subprocess
import sys
import textwrap

import pytest

EXPERIMENT = """\
name: faults
plugins: [./{plugin}]
model: {{depth: 1, seq_len: 64}}
stages:
  pretrain:
    data: {{source: arithmetic}}
    optimizer: {{name: {optimizer}}}
"""

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
    (tmp_path / "exp.yaml").write_text(EXPERIMENT.format(plugin=plugin, optimizer=optimizer))
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
