"""The `calculator` tool: nanochat's calculator, evaluated from a parsed tree instead of Python's eval.

calculator(call) -> the value of an arithmetic expression as text, or a short "error: ..." text.
Accepted (nanochat's use_calculator, Karpathy 2025): numbers (integers, decimals such as 2.5 or .5, commas
as thousands separators are dropped), `+ - * / // % **`, parentheses, a leading minus or plus, and
`'text'.count('t')` on string literals. The call is parsed with `ast` and only those nodes are evaluated,
by a walk over the tree (a whitelist: no eval, no names, no attribute but `.count`), so `__import__`,
`open(...)`, dunders, lambdas and comprehensions never run. Bounds: the call's length, the tree's size and
depth, every intermediate integer's size (a power is refused before it is computed when its result would
be too large) and the wall time of the walk.

Numbers are written as the training data writes them: an integral value without a decimal point ("20/2"
gives "10", where Python's str gives "10.0": nanochat PR #786 is that mismatch between its tool and its
data), other values with up to 10 significant digits (3.333333333).
"""
from __future__ import annotations

import ast
import math
import operator
import time

import rlkit

MAX_CHARS, MAX_NODES, MAX_DEPTH = 500, 200, 32
MAX_DIGITS = 100  # of any integer along the way
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


class CalcError(Exception):
    """Why an expression is refused: its message is what the model reads."""


@rlkit.hookimpl
def rlkit_tools():
    return {"calculator": calculator}


def calculator(call: str, time_limit: float = 1.0) -> str:
    """The value of the expression `call` as text (module docstring), or "error: <reason>"; never raises."""
    try:
        tree = parse(call)
        return format_number(Walk(time.monotonic() + time_limit).value(tree.body))
    except CalcError as e:
        return f"error: {e}"
    except ZeroDivisionError:
        return "error: division by zero"
    except (ArithmeticError, ValueError, TypeError, MemoryError, RecursionError) as e:
        return f"error: {type(e).__name__}"


def parse(call: str) -> ast.Expression:
    """The expression's tree, refused when it is too long, too big or too deep to walk cheaply."""
    text = call.strip().replace(",", "")
    if not text:
        raise CalcError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalcError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalcError("not an arithmetic expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES or depth(tree) > MAX_DEPTH:
        raise CalcError("expression too large")
    return tree


def depth(node: ast.AST) -> int:
    return 1 + max((depth(child) for child in ast.iter_child_nodes(node)), default=0)


class Walk:
    """Evaluates a whitelisted tree; every other node is refused with its kind's name."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def value(self, node: ast.AST):
        if time.monotonic() > self.deadline:
            raise CalcError("time limit")
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            x = self.value(node.operand)
            return -x if isinstance(node.op, ast.USub) else x
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            a, b = self.value(node.left), self.value(node.right)
            if isinstance(node.op, ast.Pow):
                check_power(a, b)
            return bounded(OPS[type(node.op)](a, b))
        if is_count(node):
            return node.func.value.value.count(node.args[0].value)
        raise CalcError(f"{type(node).__name__.lower()} is not allowed (numbers, + - * / // % ** ( ) and "
                        "'text'.count('t') only)")


def is_count(node: ast.AST) -> bool:
    """'literal'.count('literal'), nothing else."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "count"
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)
            and len(node.args) == 1 and not node.keywords
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def check_power(base, exponent) -> None:
    """Refuse a power whose result would pass MAX_DIGITS digits, before computing it."""
    if isinstance(exponent, float) or isinstance(base, float):
        if abs(exponent) > 1000:
            raise CalcError("exponent too large")
        return
    if exponent < 0 or abs(base) <= 1:
        return
    if exponent * math.log10(abs(base)) > MAX_DIGITS:
        raise CalcError("result too large")


def bounded(x):
    if isinstance(x, complex):
        raise CalcError("not a real number")
    if isinstance(x, int) and abs(x) >= 10**MAX_DIGITS:
        raise CalcError("result too large")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalcError("result too large")
    return x


def format_number(x) -> str:
    """An integral value without ".0"; others with up to 10 significant digits."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if isinstance(x, float):
        return format(x, ".10g")
    return str(x)
