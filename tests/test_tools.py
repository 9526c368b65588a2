"""The built-in tools, loaded through the real plugin manager: the calculator's text for valid
expressions (numbers written as the training data writes them), its error text for hostile ones (fast, no
exception, nothing written), and the python tool's stdout from the sandbox."""
import time

import pytest

from experiments import builtin_tools


@pytest.fixture(scope="module")
def tools():
    return builtin_tools()


VALID = [
    ("1+1", "2"), ("48/2", "24"), ("20/2", "10"), ("10/4", "2.5"), ("10/3", "3.333333333"), ("2*3+4", "10"),
    ("2*(3+4)", "14"), ("-5+3", "-2"), ("-(2+3)", "-5"), ("+7", "7"), ("7//2", "3"), ("-7//2", "-4"),
    ("7%3", "1"), ("2**10", "1024"), ("2**-1", "0.5"), ("1.5*4", "6"), (".5+.25", "0.75"), ("0.1+0.2", "0.3"),
    ("1,000*3", "3000"), ("12.50*4", "50"), ("3.75-1.25", "2.5"), ("100*1.1", "110"), ("(1+2)*(3+4)/7", "3"),
    ("'strawberry'.count('r')", "3"), ("'banana'.count('an')+1", "3"), (" 6 * 7 ", "42"), ("2**0.5", "1.414213562"),
    ("1e3+1", "1001"), ("10**20", "100000000000000000000"), ("10**12/1", "1000000000000"),
    ("2**40*1.0", "1099511627776"),
]


@pytest.mark.parametrize("expr,text", VALID)
def test_calculator_gives_the_training_datas_text(tools, expr, text):
    assert tools["calculator"](expr) == text


HOSTILE = [
    "__import__('os').system('touch {p}/pwned')", "open('{p}/pwned', 'w').write('x')",
    "__builtins__.open('{p}/pwned', 'w')", "().__class__.__base__.__subclasses__()[0]('{p}/pwned')",
    "().__class__.__bases__[0].__subclasses__()", "(1).__class__", "'a'.__class__", "9**9**9", "10**101", "10**99*10**99", "99999**20*99999**20*99999**20",
    "2**999999", "'a'*10**9", "'x'.count('x'*10**9)", "(-" * 150 + "1" + ")" * 150, "-" * 400 + "1",
    "1+" * 300 + "1", "(lambda: 1)()", "[x for x in range(10**9)]", "{1: 2}", "x", "x + 1", "abs(-1)",
    "'a'.upper()", "'a'.count(x)", "eval('1')", "exec('1')", "1 if 1 else 2", "1 < 2", "[1, 2]", "1/0",
    "7 % 0", "1e308 * 10", "(-8) ** 0.5", "True + 1", "1j", "f'{1}'", "import os", "a = 1", "", "   ",
    "1; 2", "'" * 1000, "1" * 600, "b'x'.count(b'x')", "print(1)",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_calculator_refuses_hostile_input_with_an_error_text_in_under_a_second(tools, expr, tmp_path):
    start = time.monotonic()
    out = tools["calculator"](expr.replace("{p}", str(tmp_path)))
    assert time.monotonic() - start < 1.0
    assert isinstance(out, str) and out.startswith("error: ") and len(out) < 200, out
    assert list(tmp_path.iterdir()) == []


def test_python_tool_returns_stdout_cut_and_errors_as_text(tools):
    from rlkit.lib.evaluation.sandbox.isolation import bwrap_path
    try:
        bwrap_path()
        isolation = "namespaces"
    except Exception:  # a host without bubblewrap: the weak mode's rlimits and timeout still apply
        isolation = "weak"
    py = lambda code, **kw: tools["python"](code, isolation=isolation, **kw)  # noqa: E731
    assert py("print(6 * 7)") == "42\n"
    assert py("1/0") == "error: ZeroDivisionError: division by zero"
    assert py("print('x' * 50)", max_chars=10) == "x" * 10 + "... (cut at 10 characters)"
    start = time.monotonic()
    assert py("while True: pass", timeout=1.0) == "error: timed out after 1 s"
    assert time.monotonic() - start < 5
    assert tools["python"]("print(1)", isolation="nonsense").startswith("error: sandbox: isolation")
