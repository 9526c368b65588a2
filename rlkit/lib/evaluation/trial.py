"""Trying tasks and rewards before any model is built: what `rlkit check` (through the stages' checks) and
`rlkit reward` do.

    task = build_task(plugins, ref, "train", "stages.rl.task")        # its rows, checked
    example, completion = sample(task)                               # the first example, its reference reply
    value = try_reward("gsm8k", fn, completion, example, "stages.rl.rewards[0]")

A reward's runtime bug (a KeyError on the example, a None or NaN returned) would otherwise surface only
after the model is loaded and the step-0 evaluation has run; here it is one line naming the reward, the
key it came from and what happened. The completion tried is the example's reference answer (the last
assistant turn), so a correct reward should give its best score on it.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from rlkit.core.plugins import call_plugin, check_examples
from rlkit.core.errors import RlkitError
from rlkit.lib.text.textdata import offline_hint
from rlkit.lib.evaluation.scoring import _finite, _guarded, batch_scorer

_BUILT: dict = {}  # (task function, args, split) -> its Task, in this process
TRIAL_TIMEOUT = 10.0  # seconds for one call, as a run allows by default (rl.reward_timeout)


def build_task(plugins, ref, split: str, where: str, base_dir=None):
    """Task `ref`'s `split` rows (its args bound), non-empty and with the fields stages read. Entries that
    share a task (midtrain, sft and rl on one, say) build it once per process: a task is read-only. With
    the experiment's folder `base_dir`, a task the hub could not give also names the offline profiles there."""
    fn = plugins.get("task", ref.name, f"{where}.name")
    args = dict(ref.args)
    key = (fn, json.dumps(args, sort_keys=True, default=repr), split)
    task = _BUILT.get(key)
    if task is None:
        try:
            task = call_plugin(where, ref.name, functools.partial(fn, **args), split)
        except RlkitError as e:
            if base_dir is None or "Hugging Face hub" not in str(e):
                raise
            raise RlkitError(f"{e}; or {offline_hint(Path(base_dir))}") from None
        if len(task) == 0:
            raise RlkitError(f"{where}: task '{ref.name}' has no {split} examples")
        check_examples(task, f"{where}: task '{ref.name}' ({split})")  # once: a built task is read-only
        _BUILT[key] = task
        while len(_BUILT) > 8:  # a few tasks' rows at most
            _BUILT.pop(next(iter(_BUILT)))
    return task


def sample(task) -> tuple[dict, str]:
    """The task's first example and its reference reply (the last assistant turn, else its "answer")."""
    example = task[0]
    replies = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
    return example, replies[-1] if replies else str(example.get("answer", ""))


def try_reward(name: str, fn, completion: str, example, where: str) -> float:
    """One call of reward `name` (its args bound in `fn`); raising, hanging or a non-finite value is one line.
    A batch scorer (e.g. a reward model) gets a batch of one."""
    at = f"{where}: reward '{name}' on {completion[:40]!r}"
    batch = batch_scorer(fn)
    if batch is not None:
        values = _guarded(lambda: list(batch([completion], [example])), TRIAL_TIMEOUT, at, f"{TRIAL_TIMEOUT:g}s",
                          "reward_timeout", "score_batch raised")
        if len(values) != 1:
            raise RlkitError(f"{at}: score_batch returned {len(values)} values for 1 completion")
        return _finite(values[0], at)
    value = _guarded(lambda: fn(completion, example), TRIAL_TIMEOUT, at, f"{TRIAL_TIMEOUT:g}s", "reward_timeout",
                     "raised")
    return _finite(value, at)


def try_rewards(plugins, refs: list, task, where: str) -> None:
    """Call each reward plugin of `refs` ({name, args}) once on the task's sample, at `where`[i]. A batch scorer
    is left out: it may load a model of its own (reward_model), which `check` must not."""
    example, completion = sample(task)
    for i, ref in enumerate(refs):
        fn = bound(plugins, ref.name, dict(ref.args), f"{where}[{i}].name")
        if batch_scorer(fn) is None:
            try_reward(ref.name, fn, completion, example, f"{where}[{i}]")


def bound(plugins, name: str, args: dict, where: str):
    """The reward plugin `name`, its args bound."""
    fn = plugins.get("reward", name, where)
    return functools.partial(fn, **args) if args else fn
