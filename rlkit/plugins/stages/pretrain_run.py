"""The pretrain stage's run (the config and its checks: pretrain.py): packed next-token steps, held-out bits per
byte every `eval_every` steps and at the end.
"""
from __future__ import annotations

import math

import torch

from rlkit.lib.training import loop as training
from rlkit.core.context import StageContext
from rlkit.core.handoff import Checkpoint
from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError
from rlkit.lib.training.optim import lr_plan, lr_schedule, set_lr
from rlkit.core.policy import flops_per_token
from rlkit.lib.training.progress import progress, step_passes
from rlkit.lib.training.speed import Meter
from rlkit.lib.text.textdata import iter_texts, packed_batches
from rlkit.lib.training.loop import grad_norm
from rlkit.plugins.stages.pretrain import PretrainConfig, grad_accum_steps


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
