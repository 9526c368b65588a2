"""What an evaluation is asked and what it reports: an `EvalTask` (an item of an eval stage's `tasks:`, what a
stage's `evals` returns), the reward that decides "correct", the checks that it measures something, and
`headline`, the figures the report card shows. rlkit.lib.evaluation.evaluate runs it (`run_task`); this
module needs no torch, so a stage plugin's config can name it while plugins are listed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from rlkit.core.config import PluginRef, bounded, one_of
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import evaluation_of

if TYPE_CHECKING:
    from rlkit.core.runtime import Runtime

MODES = ("letter", "likelihood")  # how a multiple-choice task is scored (rlkit.lib.evaluation.choice)
TOOL_FIGURES = ("tool_calls", "tool_use", "tool_error_rate", "tool_forced")


@dataclass
class EvalTask(PluginRef):
    """One task to evaluate and how (an item of an eval stage's `tasks:`; what a stage's `evals` returns)."""
    k: int = bounded(1, ge=1)  # generative: samples per problem, pass@1..k (greedy, k = 1, when temperature is 0)
    temperature: float = bounded(0.0, ge=0)
    top_k: int = bounded(50, ge=0)  # 0 keeps the whole vocabulary
    max_new_tokens: int = bounded(256, ge=1)
    examples: Optional[int] = bounded(None, ge=1)  # problems to evaluate (None: the stage's `examples`)
    reward: Optional[str] = None  # generative: the reward plugin that decides "correct" (None: the task's own)
    reward_args: dict[str, Any] = field(default_factory=dict)
    mode: str = one_of("letter", MODES)  # multiple choice: letter (chat models) | likelihood (base models)
    tools: list[PluginRef] = field(default_factory=list, metadata={"kind": "tool"})  # generative: tools rows may call
    env: Optional[PluginRef] = field(default=None, metadata={"kind": "env"})  # episodes, rewarded by the env
    max_turns: int = bounded(4, ge=1)  # with env: the model's turns an episode takes at most


def eval_reward(ref: PluginRef | None) -> dict:
    """EvalTask's reward keys for a stage's eval reward; none given: the task's own reward decides "correct"."""
    return {} if ref is None else {"reward": ref.name, "reward_args": dict(ref.args)}


def task_reward(rt: Runtime, task, spec: EvalTask, where: str):
    """(name, callable) of the reward that decides "correct": the spec's, else the task's own; a stage calls it
    before training, so a task without one fails then, naming `where`."""
    name = spec.reward or evaluation_of(task, spec.name)[1]
    if name is None:
        raise RlkitError(f"{where}: task '{spec.name}' names no reward of its own; give one, e.g. "
                         f"reward: <reward> (installed: {', '.join(sorted(rt.plugins.tables['reward']))})")
    fn = rt.plugins.get("reward", name, where)
    return name, functools.partial(fn, **spec.reward_args) if spec.reward_args else fn


MAX_K = 1024


def measures_something(spec: EvalTask, kind: str, problems: int, where: str) -> None:
    """Refuse settings under which the figure would be measured on nothing, or not be the one asked for."""
    if not 1 <= spec.k <= MAX_K:  # k samples a problem are k rows of one batch: a huge k reaches the allocator
        raise RlkitError(f"{where}: k={spec.k}; valid: 1 .. {MAX_K} samples a problem")
    if problems < 1:
        raise RlkitError(f"{where}: {problems} problems to evaluate (examples); an evaluation needs at least 1 "
                         "(leave the eval out to skip it)")
    if kind == "choice" and (spec.reward is not None or spec.k > 1):
        what = "reward" if spec.reward is not None else f"k={spec.k}"
        raise RlkitError(f"{where}: {what} does not apply: the task is multiple choice, scored by its "
                         f"answer letter or likelihood (mode); leave {what.split('=')[0]} out")
    if kind != "choice" and spec.k > 1 and spec.temperature == 0:
        raise RlkitError(f"{where}: k={spec.k} with temperature 0: greedy decoding gives one completion per "
                         f"problem, so pass@{spec.k} would not be measured; set temperature > 0 (e.g. 1.0) or k: 1")


def headline(result: dict) -> dict:
    """The figures of a result for the report card's table and Aim: accuracy (and centred, multiple choice), or
    pass@1 and pass@k (the largest k) when sampled; with tools, also TOOL_FIGURES; with an env, its reward and turns."""
    tools = {k: result[k] for k in TOOL_FIGURES if k in result}  # a run with tools: how the model used them
    if "turns" in result:  # episodes: the env's mean reward and the turns they took
        tools.update(reward=result["reward"], turns=result["turns"])
    if "accuracy" in result:
        return {**{k: result[k] for k in ("accuracy", "centred") if k in result and
                   (k == "accuracy" or result.get("kind") == "choice")}, **tools}
    ks = sorted(int(k[5:]) for k in result if k.startswith("pass@"))
    return {**({f"pass@{k}": result[f"pass@{k}"] for k in sorted({ks[0], ks[-1]})} if ks else {}), **tools}
