"""The code sandbox: right programs pass, wrong ones fail, and hostile ones score 0 within the timeout while
the test process runs on and nothing outside the sandbox changes."""
import os
import time

import pytest

from rlkit.lib.evaluation.sandbox import run_program, run_programs

TIMEOUT = 3.0


def hostile(outside):
    """name -> a program that tries to harm the run or escape; `outside` is a folder it must not touch."""
    return {
        "infinite loop": "while True:\n    pass",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "fork through multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "huge allocation": "x = bytearray(8 * 2**30)\nx[-1] = 1",
        "os.system": f"import os\nos.system('touch {outside}/by_system')",
        "subprocess": f"import subprocess\nsubprocess.run(['touch', '{outside}/by_subprocess'])",
        "write outside": f"open('{outside}/by_open', 'w').write('x')",
        "write outside through pathlib": f"import pathlib\npathlib.Path('{outside}/by_pathlib').write_text('x')",
        "write through a relative path": f"open('../{os.path.relpath(outside, '/tmp')}/by_relative', 'w')",
        "delete outside": f"import os\nos.remove('{outside}/keep.txt')",
        "delete with shutil": f"import shutil\nshutil.rmtree('{outside}')",
        "socket": "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "sys.exit(0) before the tests": "import sys\nsys.exit(0)\nassert False",
        "os._exit(0)": "import os\nos._exit(0)",
        "deep recursion": "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)",
        "read an env secret": "import os\nassert os.environ['RLKIT_TEST_SECRET'] == 'hunter2'",
        "read the parent's environ": "import os\nassert 'hunter2' in open(f'/proc/{os.getppid()}/environ').read()",
        "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "kill the parent through posix": "import posix, signal\nposix.kill(posix.getppid(), signal.SIGKILL)",
        "ctypes": "import ctypes\nctypes.CDLL(None).kill(0, 9)",
        "huge output": "while True:\n    print('x' * 10000)",
    }


def test_right_programs_pass_and_wrong_ones_fail():
    right = "def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')"
    wrong = "def add(a, b):\n    return a - b\nassert add(2, 3) == 5"
    results = run_programs([right, wrong, "syntax error here", "import math\nassert math.isclose(math.pi, 3.14159, "
                            "rel_tol=1e-5)"], timeout=TIMEOUT)
    assert [r.passed for r in results] == [True, False, False, True]
    assert "ok" in results[0].output and "AssertionError" in results[1].output
    # the program may use its own directory
    assert run_program("open('f.txt', 'w').write('hi')\nassert open('f.txt').read() == 'hi'").passed


def test_hostile_programs_score_zero_in_time_and_change_nothing_outside(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("still here")
    monkeypatch.setenv("RLKIT_TEST_SECRET", "hunter2")
    programs = hostile(outside)
    assert len(programs) >= 10
    began = time.monotonic()
    results = run_programs(list(programs.values()), timeout=TIMEOUT, memory_mb=512)
    took = time.monotonic() - began
    passed = [name for name, r in zip(programs, results) if r.passed]
    assert passed == []
    assert took < TIMEOUT * len(programs) / max(1, min(os.cpu_count() or 1, len(programs))) + 10
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "still here"
    statuses = dict(zip(programs, (r.status for r in results)))
    assert statuses["infinite loop"] == "timeout"
    # the run goes on: this process is alive, and the sandbox still scores a right program afterwards
    assert run_program("assert 1 + 1 == 2").passed


@pytest.mark.parametrize("secret_free", ["import os\nassert 'RLKIT_TEST_SECRET' not in os.environ"])
def test_the_program_gets_no_environment_of_the_run(secret_free, monkeypatch):
    monkeypatch.setenv("RLKIT_TEST_SECRET", "hunter2")
    assert run_program(secret_free).passed


def test_the_working_directory_is_deleted(tmp_path):
    result = run_program("import os\nprint('DIR', os.getcwd())")
    folder = next(line.split(" ", 1)[1] for line in result.output.splitlines() if line.startswith("DIR "))
    assert result.passed and folder and not os.path.exists(folder)
