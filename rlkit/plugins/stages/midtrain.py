"""Stage midtrain: teach the base model the chat format on a mixture of conversations.

    stages:
      midtrain: {tasks: [{name: arithmetic}], steps: 100, total_batch_tokens: 8192}

The tasks' training conversations are mixed in one seeded shuffled order,
rendered with the chat special tokens and packed into rows of seq_len tokens
(as nanochat does, every token is trained, the special tokens included, so
the model learns the format itself). Schedule and accumulation as pretrain.

This module is the plugin: the config, its checks and the registration. The training loop is
midtrain_run.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import rlkit
from rlkit.lib.evaluation.trial import build_task
from rlkit.core.config import PluginRef, bounded, plugin, plugin_list
from rlkit.core.errors import RlkitError
from rlkit.lib.training.optim import check_optimizer
from rlkit.core.stage import Stage
from rlkit.plugins.stages.pretrain import check_batch_tokens


@dataclass
class MidtrainConfig:
    tasks: list[PluginRef] = plugin_list("task")  # conversation mixture, packed
    steps: int = bounded(200, ge=1)
    total_batch_tokens: int = bounded(524288, ge=1)
    device_batch_size: int = bounded(32, ge=1)
    optimizer: PluginRef = plugin("optimizer", "muon")
    warmup_steps: int = bounded(0, ge=0)
    warmdown_frac: float = bounded(0.2, ge=0)
    final_lr_frac: float = bounded(0.0, ge=0)
    init_lr_frac: float = bounded(1.0, ge=0)  # scale every group's lr by this
    log_every: int = bounded(10, ge=1)
    save_every: int = bounded(0, ge=0)


def check(cfg: MidtrainConfig, setup) -> None:
    if not cfg.tasks:
        raise RlkitError(f"{setup.where}.tasks: empty; list at least one task, e.g. [{{name: <task>}}] "
                         f"(installed: {', '.join(sorted(setup.plugins.tables['task']))})")
    check_batch_tokens(cfg, setup)
    check_optimizer(cfg.optimizer, setup)
    for i, ref in enumerate(cfg.tasks):  # their rows, before any model
        build_task(setup.plugins, ref, "train", f"{setup.where}.tasks[{i}]", setup.base_dir)


def run(ctx, start):
    """Train: the loop is midtrain_run.py, imported (with torch) when the stage runs, not when plugins are listed."""
    from rlkit.plugins.stages import midtrain_run

    return midtrain_run.run(ctx, start)


@rlkit.hookimpl
def rlkit_stages():
    return {"midtrain": Stage(config=MidtrainConfig, run=run, check=check)}
