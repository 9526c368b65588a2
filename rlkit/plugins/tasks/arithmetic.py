"""arithmetic: generated GSM8K-format word problems, seeded, no download (the embedded default task).

A problem is a chain: a start number, then `operands - 1` steps, each adding, subtracting or
multiplying by a number, worked left to right, told as a short story:

    Q: Mia has 12 apples. She buys 7 more. She gives away 5. How many apples does Mia have now?
    A: After buying 7 more, Mia has 12 + 7 = 19 apples.
       After giving away 5, Mia has 19 - 5 = 14 apples.
       #### 14

Numbers are 1..max_value (multiplying factors 2..min(9, max_value)); a subtraction never takes more
than there is, so every intermediate value and answer is >= 0. Difficulty: `operands` (an int or a
[min, max] range), `max_value` and `ops` (any of "+-*").

With `calculator: true` each step's "a + k = r" is also a calculator call in the reply's `parts`
(rlkit.lib.text.task.calls_from_annotations): "... has 12 + 7 = " <|python_start|>12+7<|python_end|>
<|output_start|>19<|output_end|> "19 apples.", trained on the call, not on the output; the plain text,
the answer and the random draws are the same as without it.

Train and test never share a problem: each problem's canonical form ("12+7-5", the story left out)
is hashed, and hashes ending in one tenth of the range belong to test only. Test problems are also
distinct from each other; train problems may repeat. The same arguments and seed give the same task.
"""
from __future__ import annotations

import functools
import hashlib
import random

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task, calls_from_annotations, make_example
from rlkit.plugins.tools.calculator import calculator as tool

DEFAULT_SIZE = {"train": 20000, "test": 500}
TEST_BUCKETS = 10  # 1 in TEST_BUCKETS canonical problems is test-only

# A story: how it starts, one (question sentence, solution sentence) list per op, and the question.
# Fields: {name} {He} {he} {His} {his} {n} (start), {k} (step number), {a} {r} (before/after), {item(x)}.
STORIES = [
    {
        "items": [("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("shell", "shells")],
        "start": "{name} has {n_items}.",
        "+": [("{He} buys {k} more.", "After buying {k} more, {name} has {a} + {k} = {r_items}."),
              ("{He} finds {k} more.", "After finding {k} more, {name} has {a} + {k} = {r_items}.")],
        "-": [("{He} gives away {k}.", "After giving away {k}, {name} has {a} - {k} = {r_items}."),
              ("{He} loses {k}.", "After losing {k}, {name} has {a} - {k} = {r_items}.")],
        "*": [("{His} collection grows to {k} times its size.",
               "The collection grows to {a} * {k} = {r_items}.")],
        "ask": "How many {items} does {name} have now?",
    },
    {
        "items": [("passenger", "passengers")],
        "start": "A bus leaves the depot with {n_items}.",
        "+": [("At the next stop, {k} people get on.", "After {k} people get on, there are {a} + {k} = {r_items}.")],
        "-": [("At the next stop, {k} people get off.", "After {k} people get off, there are {a} - {k} = {r_items}.")],
        "*": [("At the station, the number of passengers becomes {k} times as large.",
               "At the station there are {a} * {k} = {r_items}.")],
        "ask": "How many passengers are on the bus at the end?",
    },
    {
        "items": [("dollar", "dollars")],
        "start": "{name} has ${n} in savings.",
        "+": [("{He} earns ${k} mowing lawns.", "After earning ${k}, {name} has {a} + {k} = ${r}."),
              ("{His} aunt gives {him} ${k}.", "After the gift of ${k}, {name} has {a} + {k} = ${r}.")],
        "-": [("{He} spends ${k} on a book.", "After spending ${k}, {name} has {a} - {k} = ${r}.")],
        "*": [("{His} savings grow to {k} times as much.", "The savings grow to {a} * {k} = ${r}.")],
        "ask": "How many dollars does {name} have now?",
    },
    {
        "items": [("book", "books"), ("box", "boxes"), ("chair", "chairs")],
        "start": "A shop has {n_items} in stock.",
        "+": [("A delivery brings {k} more.", "After the delivery of {k}, the shop has {a} + {k} = {r_items}."),
              ("Customers bring back {k}.", "After {k} are brought back, the shop has {a} + {k} = {r_items}.")],
        "-": [("The shop sells {k}.", "After selling {k}, the shop has {a} - {k} = {r_items}."),
              ("{k} are returned to the factory.", "After returning {k}, the shop has {a} - {k} = {r_items}.")],
        "*": [("The owner orders enough to make the stock {k} times as large.",
               "The stock becomes {a} * {k} = {r_items}.")],
        "ask": "How many {items} does the shop have now?",
    },
]
NAMES = [("Mia", "she"), ("Tom", "he"), ("Ana", "she"), ("Raj", "he"), ("Lena", "she"), ("Omar", "he"),
         ("Sofia", "she"), ("Ken", "he"), ("Zoe", "she"), ("Luis", "he")]


@rlkit.hookimpl
def rlkit_tasks():
    return {"arithmetic": arithmetic}


def arithmetic(split: str, operands=2, max_value: int = 99, ops: str = "+-", size: int | None = None,
               seed: int = 0, calculator: bool = False) -> Task:
    """`size` seeded word problems of `operands` numbers (int or [min, max]) up to `max_value`, using `ops`;
    calculator: each step's sum is also a calculator call in the reply's parts (the module docstring)."""
    lo, hi = _check(split, operands, max_value, ops, size)
    size = DEFAULT_SIZE[split] if size is None else size
    examples = _problems(split, lo, hi, max_value, ops, size, seed, calculator)
    return Task(examples, f"arithmetic-{split}", reward="gsm8k", title="arithmetic")


@functools.lru_cache(maxsize=8)  # most of a pipeline's stages ask for the same problems; a Task is read-only
def _problems(split, lo, hi, max_value, ops, size, seed, calculator) -> tuple[dict, ...]:
    """arithmetic()'s examples, drawn once for each set of arguments."""
    rng = random.Random(f"arithmetic:{split}:{seed}")
    examples, seen = [], set()
    for _ in range(100 * size + 10_000):
        if len(examples) == size:
            break
        start, steps = _chain(rng, rng.randint(lo, hi), max_value, ops)
        canon = str(start) + "".join(f"{op}{k}" for op, k in steps)
        if is_test(canon) != (split == "test") or (split == "test" and canon in seen):
            continue
        seen.add(canon)
        examples.append(_tell(rng, start, steps, calculator))
    if len(examples) < size:
        raise RlkitError(
            f"arithmetic: only {len(examples)} distinct {split} problems found for operands="
            f"{lo if lo == hi else [lo, hi]}, max_value={max_value}, ops={ops!r}; ask for fewer (size) or raise "
            "max_value/operands"
        )
    return tuple(examples)


def is_test(canon: str) -> bool:
    """Whether a canonical problem ("12+7-5") belongs to the test split."""
    digest = hashlib.blake2b(canon.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % TEST_BUCKETS == 0


def evaluate(start: int, steps) -> int:
    """Value of a chain, worked left to right: evaluate(12, [("+", 7), ("-", 5)]) == 14."""
    value = start
    for op, k in steps:
        value = value + k if op == "+" else value - k if op == "-" else value * k
    return value


def _check(split, operands, max_value, ops, size):
    if split not in DEFAULT_SIZE:
        raise RlkitError(f"arithmetic: split must be 'train' or 'test', got {split!r}")
    bounds = [operands, operands] if isinstance(operands, int) else list(operands)
    if len(bounds) != 2 or not all(isinstance(b, int) for b in bounds) or not 2 <= bounds[0] <= bounds[1]:
        raise RlkitError(f"arithmetic: operands must be an int >= 2 or a range [min, max] with 2 <= min <= max, "
                         f"got {operands!r}")
    if not isinstance(max_value, int) or max_value < 5:
        raise RlkitError(f"arithmetic: max_value must be an int >= 5, got {max_value!r}")
    if not ops or not set(ops) <= set("+-*"):
        raise RlkitError(f"arithmetic: ops must be a non-empty string of '+', '-', '*', got {ops!r}")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise RlkitError(f"arithmetic: size must be a non-negative int, got {size!r}")
    return bounds


def _chain(rng: random.Random, n_numbers: int, max_value: int, ops: str):
    """A start number and n_numbers - 1 (op, k) steps that keep the running value >= 0."""
    start = rng.randint(1, max_value)
    value, steps = start, []
    for _ in range(n_numbers - 1):
        op = rng.choice(ops)
        if op == "-" and value == 0:
            op = "+"
        k = (rng.randint(2, min(9, max_value)) if op == "*"
             else rng.randint(1, min(value, max_value)) if op == "-"
             else rng.randint(1, max_value))
        steps.append((op, k))
        value = evaluate(value, [(op, k)])
    return start, steps


def _tell(rng: random.Random, start: int, steps, calculator: bool = False) -> dict:
    """The problem as a story: question, worked solution ending in '#### answer', and its numbers."""
    story = rng.choice(STORIES)
    item, items = rng.choice(story["items"])
    name, he = rng.choice(NAMES)
    his, him = ("her", "her") if he == "she" else ("his", "him")
    fields = {"name": name, "He": he.capitalize(), "he": he, "His": his.capitalize(), "his": his, "him": him,
              "items": items, "n": start, "n_items": _count(start, item, items)}
    question, solution, value = [story["start"].format(**fields)], [], start
    for op, k in steps:
        q, s = rng.choice(story[op])
        r = evaluate(value, [(op, k)])
        step = {**fields, "k": k, "a": value, "r": r, "r_items": _count(r, item, items)}
        question.append(q.format(**step))
        sentence = s.format(**step)
        if calculator:  # GSM8K's annotation after "a + k = ", turned into a call below
            sentence = sentence.replace(f"{value} {op} {k} = ", f"{value} {op} {k} = <<{value}{op}{k}={r}>>", 1)
        solution.append(sentence)
        value = r
    question.append(story["ask"].format(**fields))
    solution.append(f"#### {value}")
    text, parts = calls_from_annotations("\n".join(solution), tool) if calculator else ("\n".join(solution), None)
    return make_example(" ".join(question), text, parts, numbers=[start] + [k for _, k in steps],
                        ops=[op for op, _ in steps], value=value)


def _count(n: int, item: str, items: str) -> str:
    return f"{n} {item if n == 1 else items}"
