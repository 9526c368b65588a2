"""Stage eval: evaluate the checkpoint handed in on a list of tasks, train nothing, hand it on unchanged.

    stages:
      eval_sft: {kind: eval, tasks: [{name: arc_easy}, {name: gsm8k, k: 8, temperature: 1.0}], examples: 500}

Each task is evaluated as it declares (rlkit.lib.text.task): a generative one by sampling `k`
completions per problem at `temperature` (greedy when 0) and scoring them with its reward,
pass@1..k by the unbiased estimator (rlkit.lib.evaluation.evaluate); a multiple-choice one by the letter (or,
`mode: likelihood`, the continuation) the model prefers, accuracy and centred accuracy
(rlkit.lib.evaluation.choice). Ranks take disjoint slices of the problems; sums are all-reduced. Samples
are drawn with the entry's seed, so `rlkit eval RUN --task T` repeats them exactly.
ChatCORE, as nanochat defines it: the mean centred accuracy over the chat tasks that ran
(ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval; a generative task's chance is 0). With
`core: {path: <DCLM eval bundle>}` (or `core: {}` to download it) also CORE, for base models
(rlkit.lib.evaluation.corebench): its 22 tasks' centred accuracies and their mean.
Every figure is tracked in Aim with the context {stage, task} and put in ctx.summary["evals"],
which the report card's table shows, one column per evaluated entry.

This module is the plugin: the config, its checks and report, and the registration; the evaluation is
eval_run.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import rlkit
from rlkit.core.config import bounded, plugin_list
from rlkit.core.errors import RlkitError
from rlkit.core.plugins import bind_args
from rlkit.lib.evaluation.evalbundle import bundle
from rlkit.lib.evaluation.evaltask import EvalTask
from rlkit.lib.evaluation.scoring import batch_scorer
from rlkit.lib.generation.episodes import episodes
from rlkit.lib.evaluation.trial import bound, build_task, sample, try_reward
from rlkit.lib.text.task import evaluation_of
from rlkit.lib.tracking.report import fmt
from rlkit.core.stage import Stage


@dataclass
class Core:
    path: Optional[str] = None  # the DCLM eval bundle's folder; None: download it (rlkit.lib.evaluation.evalbundle)
    max_per_task: int = -1  # examples per CORE task (-1: all)


@dataclass
class EvalConfig:
    tasks: list[EvalTask] = plugin_list("task")
    core: Optional[Core] = None  # CORE for base models: {path: ...} or {} to download the bundle
    examples: int = bounded(500, ge=1)  # problems per task (a task's own `examples` wins)
    split: str = "test"
    reward_timeout: float = bounded(10.0, ge=0)  # seconds a reward may take on one completion


def evals(cfg: EvalConfig) -> list[EvalTask]:
    return [replace(t, examples=cfg.examples if t.examples is None else t.examples) for t in cfg.tasks]


def check(cfg: EvalConfig, setup) -> None:
    if cfg.core is not None and cfg.core.path is not None:
        try:
            bundle(str(setup.base_dir / cfg.core.path) if not Path(cfg.core.path).is_absolute()
                   else cfg.core.path)
        except RlkitError as e:
            raise RlkitError(f"{setup.where}.{e}") from None
    if not cfg.tasks and cfg.core is None:
        raise RlkitError(f"{setup.where}.tasks: empty; list at least one, e.g. [{{name: <task>}}] "
                         f"(installed: {', '.join(sorted(setup.plugins.tables['task']))})")
    if not setup.has_start:
        raise RlkitError(f"{setup.where}: an eval entry evaluates a checkpoint; put it after a training entry or "
                         "give it init: <checkpoint or run folder>")
    for i, t in enumerate(cfg.tasks):
        where = f"{setup.where}.tasks[{i}]"
        if t.reward is not None:
            setup.plugins.get("reward", t.reward, f"{where}.reward")
        task = build_task(setup.plugins, t, cfg.split, where, setup.base_dir)  # its rows, before any model
        kind, own, _ = evaluation_of(task, t.name)
        env = episodes(setup.plugins, t.env, t.max_turns, f"{where}.env")
        if env is not None:  # the env decides "correct": reset and one step with the reference reply, once
            check_env_task(t, kind, where)
            env.trial(*sample(task))
        elif kind == "generative" and (t.reward or own) is not None:  # the reward that decides "correct", once
            fn = bound(setup.plugins, t.reward or own, t.reward_args, f"{where}.reward")
            if batch_scorer(fn) is None:
                example, completion = sample(task)
                try_reward(t.reward or own, fn, completion, example, f"{where}.reward")
        for j, tool in enumerate(t.tools):
            fn = setup.plugins.get("tool", tool.name, f"{where}.tools[{j}].name")
            bind_args("tool", tool.name, fn, tool.args, f"{where}.tools[{j}].args")


def check_env_task(t: EvalTask, kind: str, where: str) -> None:
    if kind == "choice" or t.reward is not None:
        what = "a multiple-choice task" if kind == "choice" else "reward"
        raise RlkitError(f"{where}.env: {what} does not go with an env, which rewards its episodes itself; leave "
                         f"{'env' if kind == 'choice' else 'reward'} out")


def run(ctx, start):
    """Evaluate: eval_run.py, imported (with torch) when the stage runs, not when plugins are listed."""
    from rlkit.plugins.stages import eval_run

    return eval_run.run(ctx, start)


def report(summary: dict, tracked: dict) -> list[str]:
    lines = [f"{title}: " + ", ".join(f"{k} {fmt(v)}" for k, v in figures.items())
             for title, figures in summary.get("evals", {}).items()]
    return lines + [f"CORE {label}: accuracy {fmt(f['accuracy'])}, centred {fmt(f['centred'])}"
                    for label, f in summary.get("core_tasks", {}).items()]


@rlkit.hookimpl
def rlkit_stages():
    return {"eval": Stage(config=EvalConfig, run=run, check=check, report=report, evals=evals)}
