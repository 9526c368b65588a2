"""reasoning_gym: any of reasoning-gym's procedural generators as a task (pip install -e '.[envs]').

    task: {name: reasoning_gym, args: {name: basic_arithmetic, min_terms: 2, max_terms: 3, size: 1000, seed: 0}}

`name` picks the generator (reasoning_gym.factory.DATASETS); every other key but `size`, `seed` and
`instruction` is its config (the generator's config dataclass: a wrong key is one line listing the valid
ones). An example's question is the generator's (then a blank line and `instruction`, when given); its
reference reply is "#### <answer>", the GSM8K format rlkit's chat models end their replies in; the
generator's entry rides along under "reasoning_gym" for the reward (rlkit/plugins/rewards/reasoninggym.py).

Train and test never share a problem: a problem is its question text, and questions whose hash
(blake2b) is even belong to test only, odd ones to train only. Each split draws from its own generator seed
(derived from `seed`, the split and the generator's name), keeping the questions of its half, until it has
`size` (train: 2000 by default; test: 200, distinct). reasoning-gym seeds item i of a dataset with seed s
as random.Random(s + i), so two seeds alone would overlap at shifted indices; the hash partition is what
keeps the splits apart. The same args give the same problems in the same order.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task, make_example

DEFAULT_SIZE = {"train": 2000, "test": 200}
INSTALL = "reasoning_gym: the reasoning-gym package is missing; pip install -e '.[envs]' (or pip install reasoning-gym)"


@rlkit.hookimpl
def rlkit_tasks():
    return {"reasoning_gym": reasoning_gym}


def reasoning_gym(split: str, name: str, size: int | None = None, seed: int = 0, instruction: str | None = None,
                  **config) -> Task:
    """`size` problems of generator `name` with its `config`, disjoint from the other split's (module docstring)."""
    if split not in DEFAULT_SIZE:
        raise RlkitError(f"reasoning_gym: split must be 'train' or 'test', got {split!r}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise RlkitError(f"reasoning_gym: size must be a positive int, got {size!r}")
    config = check_config(name, config)
    examples = problems(name, config, split, DEFAULT_SIZE[split] if size is None else size, seed, instruction)
    return Task(examples, f"reasoning_gym-{name}-{split}", reward="reasoning_gym", title=f"reasoning-gym {name}")


def problems(name: str, config: dict, split: str, size: int, seed: int, instruction: str | None = None,
             salt: str = "") -> list[dict]:
    """`size` examples of `split`'s half of the problems; `salt` varies the draws (a curriculum's level)."""
    rg = require()
    tries = 4 * size + 100  # each split keeps about half of what it draws
    dataset = rg.create_dataset(name, **config, seed=split_seed(name, split, seed, salt), size=tries)
    examples, seen = [], set()
    for i in range(tries):
        entry = dataset[i]
        question = entry["question"]
        if is_test(question) != (split == "test") or (split == "test" and question in seen):
            continue
        seen.add(question)
        examples.append(to_example(name, config, entry, instruction))
        if len(examples) == size:
            return examples
    raise RlkitError(f"reasoning_gym: only {len(examples)} {'distinct ' if split == 'test' else ''}{split} problems "
                     f"of {name!r} in {tries} draws with this config; ask for fewer (size) or a harder config")


def to_example(name: str, config: dict, entry: dict, instruction: str | None) -> dict:
    """One generated entry as an rlkit example; its reference reply ends in "#### <answer>"."""
    question = entry["question"] + (f"\n\n{instruction}" if instruction else "")
    answer = "" if entry["answer"] is None else str(entry["answer"])  # None: graded by checking, not looked up
    return make_example(question, f"#### {answer}",
                        reasoning_gym={"name": name, "config": config, "entry": entry})


def is_test(question: str) -> bool:
    """Whether a problem (its question text) belongs to the test split: half of all questions, by hash."""
    return hashlib.blake2b(question.encode(), digest_size=8).digest()[-1] % 2 == 0


def split_seed(name: str, split: str, seed: int, salt: str = "") -> int:
    """The generator seed of one split: far from the other split's, and from other generators' and seeds'."""
    digest = hashlib.blake2b(f"reasoning_gym:{name}:{split}:{seed}:{salt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def check_config(name: str, config: dict) -> dict:
    """The generator's config as given, checked by its own dataclass: a wrong name or value is one line."""
    generators = require().factory.DATASETS
    if name not in generators:
        close = difflib.get_close_matches(str(name), list(generators), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RlkitError(f"reasoning_gym: no generator named {name!r} ({hint}{len(generators)} are installed: "
                         f"reasoning_gym.factory.DATASETS)")
    fields = [f.name for f in dataclasses.fields(generators[name][1]) if f.name not in ("seed", "size")]
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise RlkitError(f"reasoning_gym: generator {name!r} has no config {', '.join(unknown)}; it takes: "
                         f"{', '.join(fields)}")
    try:
        checked = generators[name][1](**config)
        if hasattr(checked, "validate"):
            checked.validate()
    except (AssertionError, ValueError, TypeError) as e:
        raise RlkitError(f"reasoning_gym: generator {name!r} refuses this config: {e}") from None
    return dict(config)


def require():
    """The reasoning_gym package, or one line saying how to install it."""
    try:
        import reasoning_gym
        import reasoning_gym.factory
    except ImportError:
        raise RlkitError(INSTALL) from None
    return reasoning_gym
