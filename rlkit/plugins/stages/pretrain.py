"""Stage pretrain: next-token prediction on a packed token stream.

    stages:
      pretrain: {data: {source: arithmetic}, steps: 600, total_batch_tokens: 8192, device_batch_size: 32}

Each optimizer step sees `total_batch_tokens` tokens (all ranks): rows of
seq_len tokens, `device_batch_size` rows a forward pass, gradients
accumulated over total_batch_tokens / (device_batch_size * seq_len * world)
passes. The learning rate warms up, holds, then falls linearly over the last
`warmdown_frac` of the steps. Held-out bits-per-byte (tokenizer-independent)
every `eval_every` steps and at the end.

This module is the plugin: the config, its checks and the registration. The training loop is
pretrain_run.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import rlkit
from rlkit.core.config import PluginRef, bounded, plugin
from rlkit.lib.training.optim import check_optimizer
from rlkit.core.stage import Stage, divides
from rlkit.lib.text.textdata import TextData, check_data


@dataclass
class PretrainConfig:
    data: TextData = field(default_factory=TextData)
    steps: int = bounded(1000, ge=1)  # optimizer steps
    total_batch_tokens: int = bounded(524288, ge=1)  # tokens per optimizer step, all ranks; accumulation is derived
    device_batch_size: int = bounded(32, ge=1)  # rows per forward pass
    optimizer: PluginRef = plugin("optimizer", "muon")
    warmup_steps: int = bounded(0, ge=0)
    warmdown_frac: float = bounded(0.2, ge=0)  # fraction of steps at the end where lr falls linearly
    final_lr_frac: float = bounded(0.0, ge=0)
    eval_every: int = bounded(250, ge=0)  # bits-per-byte on held-out text every N steps (0: only at the end)
    eval_tokens: int = bounded(65536, ge=0)
    log_every: int = bounded(10, ge=1)
    save_every: int = bounded(0, ge=0)  # checkpoint every N steps (0: only at the end)


def check(cfg: PretrainConfig, setup) -> None:
    check_batch_tokens(cfg, setup)
    check_data(cfg.data, setup)
    check_optimizer(cfg.optimizer, setup)


def check_batch_tokens(cfg, setup) -> None:
    """Global batches of packed rows must split evenly over device batches on every process."""
    seq_len, world = setup.model.seq_len, setup.world_size
    divides(setup, "total_batch_tokens", cfg.total_batch_tokens, cfg.device_batch_size * seq_len * world,
            f"device_batch_size x seq_len x processes = {cfg.device_batch_size} x {seq_len} x {world}")


def run(ctx, start):
    """Train: the loop is pretrain_run.py, imported (with torch) when the stage runs, not when plugins are listed."""
    from rlkit.plugins.stages import pretrain_run

    return pretrain_run.run(ctx, start)


def grad_accum_steps(total_tokens: int, device_batch: int, seq_len: int, world: int) -> int:
    """Forward passes per optimizer step so that all ranks together see `total_tokens`
    (divisibility is checked with the config, before any work: check_batch_tokens)."""
    return total_tokens // (device_batch * seq_len * world)


@rlkit.hookimpl
def rlkit_stages():
    return {"pretrain": Stage(config=PretrainConfig, run=run, check=check)}
