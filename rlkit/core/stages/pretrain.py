"""Stage 2, pretrain: next-token prediction on a packed token stream.

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

import torch

from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError
from rlkit.core.optim import lr_multiplier, set_lr
from rlkit.core.progress import progress
from rlkit.core.speed import Meter
from rlkit.core.textdata import iter_texts, packed_batches
from rlkit.core.track import grad_norm


def run(ctx) -> None:
    s = ctx.stage
    tokenizer = ctx.tokenizer()
    model = ctx.build_model(tokenizer.vocab_size)
    optimizer = ctx.build_optimizer(model)
    seq_len, world = model.config.seq_len, ctx.dist.world_size
    accum = grad_accum_steps(s.total_batch_tokens, s.device_batch_size, seq_len, world)

    def texts(split):
        return lambda: iter_texts(s.data.source, tasks=ctx.plugins.tables["task"], args=dict(s.data.args),
                                  text_field=s.data.text_field, split=split, base_dir=ctx.base_dir,
                                  where="stages.pretrain.data.source")

    resumed = ctx.restore(optimizer)
    start_step, position = (resumed["step"], resumed["data_position"]) if resumed else (0, None)
    eval_split = "test" if s.data.source in ctx.plugins.tables["task"] else s.data.split
    for split in dict.fromkeys((s.data.split, eval_split)):  # a bad or empty split fails now, not mid-run
        if next(iter(texts(split)()), None) is None:
            raise RlkitError(f"stages.pretrain.data.source: '{s.data.source}' gave no text (split '{split}'); "
                             "point it at a task, a non-empty .txt/.jsonl/.parquet file or folder, or a dataset")
    batches = packed_batches(texts(s.data.split), tokenizer, s.device_batch_size, seq_len,
                             rank=ctx.dist.rank, world_size=world, position=position)
    token_bytes = tokenizer.token_bytes().to(ctx.device)
    forward = ctx.maybe_compile(model)
    train = ctx.ddp(forward)
    meter = Meter(ctx.device, ctx.dtype, model.flops_per_token())
    print0(f"[pretrain] {s.steps} steps x {s.total_batch_tokens:,} tokens ({accum} accumulation passes "
           f"of {s.device_batch_size} x {seq_len}), {model.flops_per_token():,} FLOPs/token")

    loss_value, bar = float("nan"), progress("pretrain", s.steps, start=start_step)
    for step in range(start_step, s.steps):
        lrm = lr_multiplier(step, s.steps, s.warmup_steps, s.warmdown_frac, s.final_lr_frac)
        set_lr(optimizer, lrm)
        loss_value, gnorm, position = packed_step(ctx, train, model, optimizer, batches, accum, step + 1)
        meter.add(accum * s.device_batch_size * seq_len)
        done = step + 1
        ctx.log_step(done, meter, loss=loss_value, lr_mult=lrm, grad_norm=gnorm)
        if s.eval_every and done % s.eval_every == 0 and done != s.steps:
            bpb = evaluate_bpb(ctx, model, tokenizer, texts(eval_split), token_bytes, s.eval_tokens)
            print0(f"[pretrain] step {done:5d} | held-out bits/byte {bpb:.4f}")
            ctx.tracker.metrics({"bpb": bpb}, step=done, stage="pretrain")
        bar.update(done, loss=loss_value)
        ctx.end_step(done, model, optimizer, {"data_position": position})
    bar.close()

    bpb = evaluate_bpb(ctx, model, tokenizer, texts(eval_split), token_bytes, s.eval_tokens)
    print0(f"[pretrain] final | loss {loss_value:.4f} | held-out bits/byte {bpb:.4f}")
    ctx.tracker.metrics({"bpb": bpb}, step=s.steps, stage="pretrain")
    ctx.save(s.steps, model, optimizer, {"data_position": position}, done=True)
    ctx.summary.update(steps=s.steps, tokens=s.steps * s.total_batch_tokens, final_loss=loss_value, bpb=bpb)


def packed_step(ctx, train, model, optimizer, batches, accum: int, done: int):
    """One optimizer step over `accum` micro-batches (x, y, position) from `batches`: gradients accumulate
    (DDP all-reduces only on the last pass), the loss and gradient are checked before the update so no
    non-finite weights are ever saved. Returns (loss averaged over ranks, grad norm, position after)."""
    total, position = torch.zeros((), device=ctx.device), None
    for micro in range(accum):
        x, y, position = next(batches)
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with ctx.no_sync(train, last=micro == accum - 1), ctx.autocast():
            loss = train(x, y) / accum
        loss.backward()
        total += loss.detach()
    gnorm = grad_norm(model)
    loss_value = ctx.mean_over_ranks(total)
    ctx.check_step(loss_value, gnorm, done)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return loss_value, gnorm, position


def grad_accum_steps(total_tokens: int, device_batch: int, seq_len: int, world: int) -> int:
    """Forward passes per optimizer step so that all ranks together see `total_tokens`
    (divisibility is checked with the config, before any work: pipeline.check_batches)."""
    return total_tokens // (device_batch * seq_len * world)


@torch.no_grad()
def evaluate_bpb(ctx, model, tokenizer, texts, token_bytes, max_tokens: int) -> float:
    """Bits per byte on held-out text: sum of per-token losses (nats) / (ln 2 * bytes of those tokens).

    Special tokens (0 bytes) are left out of both sums, so the figure does not depend on the tokenizer."""
    model.eval()
    batch, seq_len = 8, model.config.seq_len
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
