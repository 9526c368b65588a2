"""verifiers: a verifiers v1 Task's own `score(trace)` on a completion, offline (pip install -e '.[envs]').

    rewards: [{name: verifiers}]          # for examples of the verifiers task

The Task is rebuilt from the example's "verifiers" key (taskset id, config, the task's wire data) as
its taskset would build it, and scored on a Trace holding the prompt and the completion as the one
assistant reply (`trace.last_reply`, `trace.messages`), with no runtime: signals that need one are
skipped, as verifiers itself does offline. The reward is the trace's total, its `@vf.reward`
signals summed with their weights; each signal is also tracked as `reward/verifiers/<signal>`
(a Scored, rlkit/lib/evaluation/scoring.py). A Task whose scoring raises stops the run with one line.
"""
from __future__ import annotations

import asyncio
import functools
import json
from typing import Mapping

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.scoring import Scored
from rlkit.plugins.tasks.verifiers_v1 import load, require


class Verifiers:
    """A batched reward: one event loop for the batch's scoring, and the signals as tracked figures."""

    def __call__(self, completion: str, example: Mapping) -> float:
        return self.score_batch([completion], [example])[0]

    def score_batch(self, completions: list[str], examples: list) -> Scored:
        traces = asyncio.run(_score_all(completions, examples))
        names = sorted({name for trace in traces for name in trace.rewards})
        figures = {name: [_signal(trace, name) for trace in traces] for name in names}
        return Scored([float(trace.reward) for trace in traces], figures)


async def _score_all(completions, examples) -> list:
    traces = []
    for completion, example in zip(completions, examples):
        task, trace = _trace(completion, example)
        await task.score(trace)
        traces.append(trace)
    return traces


def _trace(completion: str, example: Mapping):
    """(the example's Task, a Trace of its prompt and `completion`)."""
    vf = require()
    from verifiers.v1.state import state_cls

    info = example.get("verifiers") if isinstance(example, Mapping) else None
    if not isinstance(info, Mapping):
        raise RlkitError("the verifiers reward scores examples of the verifiers task (this example has no "
                         "'verifiers' key); use another reward for this task")
    task_type, task_config = _task_type(info["taskset"], json.dumps(info["config"], sort_keys=True))
    task = task_type(task_type.data_type().model_validate(info["data"]), task_config)
    prompt = [vf.MessageNode(message=vf.UserMessage(content=task.data.prompt_text))]
    reply = vf.MessageNode(parent=0, message=vf.AssistantMessage(content=completion), sampled=True)
    trace = vf.Trace(task=vf.TraceTask(type=task_type.__name__, data=task.data, key=task.key, hash=task.hash),
                     state=state_cls(task_type)(), nodes=prompt + [reply], root_reply=completion,
                     agent=vf.AgentInfo(config=vf.AgentConfig(), name="rlkit", trainable=False))
    return task, trace


@functools.lru_cache(maxsize=16)
def _task_type(taskset: str, config: str):
    """(the taskset's Task class, the TaskConfig its tasks are built with), for one taskset and config."""
    built = load(taskset, json.loads(config))
    return type(built).task_type(), built.config.task


def _signal(trace, name: str) -> float:
    reward = trace.rewards.get(name)
    return 0.0 if reward is None else float(reward.score)


verifiers = Verifiers()


@rlkit.hookimpl
def rlkit_rewards():
    return {"verifiers": verifiers}
