"""verifiers: the tasks of a verifiers v1 Taskset as an rlkit task (pip install -e '.[envs]').

    task: {name: verifiers, args: {taskset: my_taskset, size: 500}}      # + the taskset's own config keys
    rewards: [{name: verifiers}]

`taskset` is a verifiers taskset id: an installed module exporting its Taskset subclass in `__all__`
(verifiers.v1.load_taskset); every other key but `size` is the taskset's config (its pydantic
TasksetConfig, which checks it). Only the data is used offline: each Task's `prompt` (text or
messages) and `system_prompt` become the example's messages, with no reference reply (verifiers
tasks carry a checker, not a solution, so they are for RL and eval, not SFT); the task's wire data
rides along under "verifiers" for the reward (rlkit/plugins/rewards/verifiers_v1.py), which rebuilds
the Task and calls its `score(trace)`. Episodes (harnesses, runtimes, the network) are not run.

Splits: a task is its key (verifiers' `Task.key`, a content hash unless the taskset gives a durable
id); keys whose blake2b hash ends in one tenth of the range are test, the rest train, so the splits
never share a task. Each split keeps the taskset's order; `size` caps it (the first ones).
"""
from __future__ import annotations

import hashlib

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task

TEST_BUCKETS = 10
INSTALL = "verifiers: the verifiers package is missing; pip install -e '.[envs]' (or pip install verifiers)"


@rlkit.hookimpl
def rlkit_tasks():
    return {"verifiers": verifiers}


def verifiers(split: str, taskset: str, size: int | None = None, **config) -> Task:
    """The tasks of `taskset` (built with `config`) whose key falls in `split` (module docstring)."""
    if split not in ("train", "test"):
        raise RlkitError(f"verifiers: split must be 'train' or 'test', got {split!r}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise RlkitError(f"verifiers: size must be a positive int, got {size!r}")
    examples = []
    for task in load(taskset, config):
        if is_test(task.key) != (split == "test"):
            continue
        examples.append(to_example(taskset, config, task))
        if size is not None and len(examples) == size:
            break
    return Task(examples, f"verifiers-{taskset}-{split}", reward="verifiers", title=f"verifiers {taskset}")


def load(taskset: str, config: dict):
    """The Taskset `taskset` built with `config`; a missing module or a bad config is one line."""
    vf = require()
    try:
        config_type = vf.taskset_config_type(taskset)
        return vf.load_taskset(config_type.model_validate({**config, "id": taskset}))
    except (ImportError, TypeError, AttributeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        message = " ".join(str(e).split())[:300]
        raise RlkitError(f"verifiers: cannot load taskset {taskset!r} ({type(e).__name__}: {message})") from None


def to_example(taskset: str, config: dict, task) -> dict:
    """One verifiers Task as an rlkit example: its prompt as messages, its data for the reward."""
    data = task.data
    messages = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    if isinstance(data.prompt, str) or data.prompt is None:
        messages.append({"role": "user", "content": data.prompt or ""})
    else:
        from verifiers.v1.types import content_text

        messages += [{"role": m.role, "content": content_text(m.content)} for m in data.prompt]
    return {"messages": messages, "answer": "",
            "verifiers": {"taskset": taskset, "config": config, "data": data.model_dump(mode="json")}}


def is_test(key: str) -> bool:
    """Whether a task (its key) belongs to the test split: one in TEST_BUCKETS, by hash."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % TEST_BUCKETS == 0


def require():
    """verifiers.v1, or one line saying how to install it."""
    try:
        import verifiers.v1 as vf
    except ImportError:
        raise RlkitError(INSTALL) from None
    return vf
