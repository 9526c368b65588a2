"""Stage pretrain: next-token prediction on a packed token stream.

    stages:
      pretrain: {data: {source: arithmetic}, steps: 600, total_batch_tokens: 8192, device_batch_size: 32}

Each optimizer step sees `total_batch_tokens` tokens (all ranks): rows of
seq_len tokens, `device_batch_size` rows a forward pass, gradients
accumulated over total_batch_tokens / (device_batch_size * seq_len * world)
passes. The learning rate warms up, holds, then falls linearly over the last
`warmdown_frac` of the steps. Held-out bits-per-byte (tokenizer-independent)
every `eval_every` steps and at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import rlkit
from rlkit.lib.training import loop as training
from rlkit.core.config import PluginRef, bounded, plugin
from rlkit.core.context import StageContext
from rlkit.core.handoff import Checkpoint
from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError
from rlkit.lib.training.optim import lr_plan, lr_schedule, set_lr
from rlkit.core.policy import flops_per_token
from rlkit.lib.training.progress import progress, step_passes
from rlkit.lib.training.speed import Meter
from rlkit.lib.training.optim import check_optimizer
from rlkit.core.stage import Stage, divides
from rlkit.lib.text.textdata import TextData, check_data, iter_texts, packed_batches
from rlkit.lib.training.loop import grad_norm


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


def run(ctx: StageContext[PretrainConfig], start: Checkpoint | None) -> Checkpoint:
    s = ctx.cfg
    session = ctx.session(start, s.optimizer)
    model, tokenizer, optimizer = session.model, session.tokenizer, session.optimizer
    print0(f"[{ctx.name}] {lr_plan(s, optimizer)}")  # init_lr_frac scales explicit rates too
    seq_len, world = ctx.seq_len, ctx.dist.world_size
    accum = grad_accum_steps(s.total_batch_tokens, s.device_batch_size, seq_len, world)

    def texts(split):
        return lambda: iter_texts(s.data.source, tasks=ctx.plugins.tables["task"], args=s.data.args,
                                  text_field=s.data.text_field, split=split, base_dir=ctx.base_dir,
                                  where=f"stages.{ctx.name}.data.source")

    start_step, position = session.start_step, session.extra.get("data_position")
    eval_split = "test" if s.data.source in ctx.plugins.tables["task"] else s.data.split
    for split in dict.fromkeys((s.data.split, eval_split)):  # a bad or empty split fails now, not mid-run
        if next(iter(texts(split)()), None) is None:
            raise RlkitError(f"stages.{ctx.name}.data.source: '{s.data.source}' gave no text (split '{split}'); "
                             "point it at a task, a non-empty .txt/.jsonl/.parquet file or folder, or a dataset")
    batches = packed_batches(texts(s.data.split), tokenizer, s.device_batch_size, seq_len,
                             rank=ctx.dist.rank, world_size=world, position=position)
    token_bytes = tokenizer.token_bytes().to(ctx.device)
    train = session.begin()  # compiled per model.compile, DDP under torchrun
    flops = flops_per_token(model)
    meter = Meter(ctx.device, ctx.dtype, flops, ctx.experiment.get("mfu_peak_flops"))
    print0(f"[{ctx.name}] {s.steps} steps x {s.total_batch_tokens:,} tokens ({accum} accumulation passes "
           f"of {s.device_batch_size} x {seq_len}), {flops:,} FLOPs/token")

    loss_value, bar = float("nan"), progress(ctx.name, s.steps, start=start_step)
    for step in range(start_step, s.steps):
        lrm = lr_schedule(s, step)
        set_lr(optimizer, lrm)
        loss_value, gnorm, position = packed_step(ctx, session, train, batches, accum, step + 1)
        meter.add(accum * s.device_batch_size * seq_len)
        done = step + 1
        training.log_step(ctx, done, meter, loss=loss_value, lr_mult=lrm, grad_norm=gnorm)
        if s.eval_every and done % s.eval_every == 0 and done != s.steps:
            bpb = evaluate_bpb(ctx, model, tokenizer, texts(eval_split), token_bytes, s.eval_tokens)
            print0(f"[{ctx.name}] step {done:5d} | held-out bits/byte {bpb:.4f}")
            ctx.tracker.metrics({"bpb": bpb}, step=done, stage=ctx.name)
        bar.update(done, loss=loss_value)
        session.end_step(done, {"data_position": position})
    bar.close()

    bpb = evaluate_bpb(ctx, model, tokenizer, texts(eval_split), token_bytes, s.eval_tokens)
    print0(f"[{ctx.name}] final | loss {loss_value:.4f} | held-out bits/byte {bpb:.4f}")
    ctx.tracker.metrics({"bpb": bpb}, step=s.steps, stage=ctx.name)
    ctx.summary.update(steps=s.steps, tokens=s.steps * s.total_batch_tokens, final_loss=loss_value, bpb=bpb)
    return session.save(s.steps, {"data_position": position}, done=True)


def packed_step(ctx, session, train, batches, accum: int, done: int):
    """One optimizer step over `accum` micro-batches (x, y, position) from `batches`: gradients accumulate
    (DDP all-reduces only on the last pass), the loss and gradient are checked before the update so no
    non-finite weights are ever saved; a slow step reports its passes, and Ctrl-C stops after one
    (step_passes). Returns (loss averaged over ranks, grad norm, position after)."""
    model, optimizer = session.model, session.optimizer
    total, position = torch.zeros((), device=ctx.device), None
    for micro in step_passes(ctx, session, accum, done):
        x, y, position = next(batches)
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with ctx.no_sync(train, last=micro == accum - 1), ctx.autocast():
            loss = train(x, y) / accum
        loss.backward()
        total += loss.detach()
    gnorm = grad_norm(model)
    loss_value = ctx.mean_over_ranks(total)
    training.check_step(ctx, loss_value, gnorm, done)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return loss_value, gnorm, position


def grad_accum_steps(total_tokens: int, device_batch: int, seq_len: int, world: int) -> int:
    """Forward passes per optimizer step so that all ranks together see `total_tokens`
    (divisibility is checked with the config, before any work: check_batch_tokens)."""
    return total_tokens // (device_batch * seq_len * world)


@torch.no_grad()
def evaluate_bpb(ctx, model, tokenizer, texts, token_bytes, max_tokens: int) -> float:
    """Bits per byte on held-out text: sum of per-token losses (nats) / (ln 2 * bytes of those tokens).

    Special tokens (0 bytes) are left out of both sums, so the figure does not depend on the tokenizer."""
    model.eval()
    batch, seq_len = 8, ctx.seq_len
    rows = max(1, max_tokens // (batch * seq_len * ctx.dist.world_size))
    nats = torch.zeros((), device=ctx.device, dtype=torch.float64)
    nbytes = torch.zeros((), device=ctx.device, dtype=torch.float64)
    stream = packed_batches(texts, tokenizer, batch, seq_len, rank=ctx.dist.rank,
                            world_size=ctx.dist.world_size, loop=False)
    for _, (x, y, _) in zip(range(rows), stream):
        x, y = x.to(ctx.device), y.to(ctx.device)
        with ctx.autocast():
            loss = model(x, y, loss_reduction="none")  # (B, T)
        b = token_bytes[y]
        nats += (loss.float() * (b > 0)).sum()
        nbytes += b.sum()
    model.train()
    nats, nbytes = ctx.sum_over_ranks(nats), ctx.sum_over_ranks(nbytes)
    return (nats / (math.log(2) * nbytes.clamp(min=1))).item()


@rlkit.hookimpl
def rlkit_stages():
    return {"pretrain": Stage(config=PretrainConfig, run=run, check=check)}
