"""Stage sft: supervised fine-tuning on a task's conversations.

    stages:
      sft: {task: {name: arithmetic}, steps: 250, examples_per_step: 32, device_batch_size: 16}

Each conversation is rendered on its own (no packing), padded to the longest
in its micro-batch, and trained only where the loss mask is 1 (the
assistant's tokens and its <|assistant_end|>). The loss is the mean over all
such tokens in the optimizer step (all micro-batches, all ranks). At the end:
greedy accuracy on held-out problems, scored by `eval_reward`.

This module is the plugin: the config, its checks, evals and report, and the registration. The training
loop is sft_run.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import rlkit
from rlkit.lib.evaluation.trial import build_task
from rlkit.core.config import PluginRef, bounded, optional_plugin, plugin, plugin_list
from rlkit.lib.evaluation.evaltask import EvalTask, eval_reward
from rlkit.lib.tracking.report import fmt
from rlkit.lib.training.optim import check_optimizer
from rlkit.core.stage import Stage, divides


@dataclass
class SFTConfig:
    task: PluginRef = plugin("task")
    steps: int = bounded(200, ge=1)
    examples_per_step: int = bounded(32, ge=1)  # conversations per optimizer step, all ranks
    device_batch_size: int = bounded(8, ge=1)
    optimizer: PluginRef = plugin("optimizer", "muon")
    init_lr_frac: float = bounded(0.02, ge=0)
    warmdown_frac: float = bounded(1.0, ge=0)  # nanochat's sft ramps lr down linearly over the whole stage
    eval_examples: int = bounded(200, ge=0)  # greedy accuracy on held-out problems at the end (0: skip)
    eval_reward: Optional[PluginRef] = optional_plugin("reward")  # scores that accuracy (left out: the task's own)
    eval_tools: list[PluginRef] = plugin_list("tool")  # tools the held-out eval's completions may call
    eval_max_new_tokens: int = bounded(128, ge=0)
    log_every: int = bounded(10, ge=1)
    save_every: int = bounded(0, ge=0)


def check(cfg: SFTConfig, setup) -> None:
    divides(setup, "examples_per_step", cfg.examples_per_step, cfg.device_batch_size * setup.world_size,
            f"device_batch_size x processes = {cfg.device_batch_size} x {setup.world_size}")
    check_optimizer(cfg.optimizer, setup)
    build_task(setup.plugins, cfg.task, "train", f"{setup.where}.task", setup.base_dir)  # its rows, before any model


def run(ctx, start):
    """Train: the loop is sft_run.py, imported (with torch) when the stage runs, not when plugins are listed."""
    from rlkit.plugins.stages import sft_run

    return sft_run.run(ctx, start)


def evals(cfg: SFTConfig) -> list[EvalTask]:
    """Greedy accuracy on the task's test problems, scored by `eval_reward`."""
    if not cfg.eval_examples:
        return []
    return [EvalTask(name=cfg.task.name, args=dict(cfg.task.args), k=1, temperature=0.0, top_k=0,
                     max_new_tokens=cfg.eval_max_new_tokens, examples=cfg.eval_examples,
                     **eval_reward(cfg.eval_reward), tools=list(cfg.eval_tools))]


def report(summary: dict, tracked: dict) -> list[str]:
    return [f"held-out greedy accuracy {fmt(summary['accuracy'])}"] if "accuracy" in summary else []


@rlkit.hookimpl
def rlkit_stages():
    return {"sft": Stage(config=SFTConfig, run=run, check=check, report=report, evals=evals)}
