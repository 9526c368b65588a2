"""Stage 3, midtrain: teach the base model the chat format on a mixture of conversations.

    stages:
      midtrain: {tasks: [{name: arithmetic}], steps: 100, total_batch_tokens: 8192}

The tasks' training conversations are mixed in one seeded shuffled order,
rendered with the chat special tokens and packed into rows of seq_len tokens
(as nanochat does, every token is trained, the special tokens included, so
the model learns the format itself). Schedule and accumulation as pretrain.
"""
from __future__ import annotations

import random

import torch

from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError
from rlkit.core.optim import lr_multiplier, set_lr
from rlkit.core.progress import progress
from rlkit.core.speed import Meter
from rlkit.core.stages.pretrain import grad_accum_steps, packed_step


def run(ctx) -> None:
    s = ctx.stage
    if not s.tasks:
        raise RlkitError("stages.midtrain.tasks: empty; list at least one task, e.g. [{name: arithmetic}]")
    tokenizer = ctx.tokenizer()
    model = ctx.build_model(tokenizer.vocab_size)
    optimizer = ctx.build_optimizer(model)
    seq_len, world = model.config.seq_len, ctx.dist.world_size
    accum = grad_accum_steps(s.total_batch_tokens, s.device_batch_size, seq_len, world)
    tasks = [ctx.task(ref, "train") for ref in s.tasks]
    mixture = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
    random.Random(ctx.seed()).shuffle(mixture)
    conversations = (tokenizer.render_conversation(tasks[t][i]["messages"])[0] for t, i in _forever(mixture))
    batches = pack(conversations, s.device_batch_size, seq_len, ctx.dist.rank, world)
    resumed = ctx.restore(optimizer)
    start_step = resumed["step"] if resumed else 0
    for _ in range(start_step * accum):  # resume: replay the (cheap, deterministic) stream to where it was
        next(batches)
    train = ctx.ddp(ctx.maybe_compile(model))
    meter = Meter(ctx.device, ctx.dtype, model.flops_per_token())
    print0(f"[midtrain] {s.steps} steps x {s.total_batch_tokens:,} tokens from {len(mixture):,} conversations "
           f"({len(tasks)} task{'s' if len(tasks) > 1 else ''})")

    loss_value, bar = float("nan"), progress("midtrain", s.steps, start=start_step)
    for step in range(start_step, s.steps):
        lrm = s.init_lr_frac * lr_multiplier(step, s.steps, s.warmup_steps, s.warmdown_frac, s.final_lr_frac)
        set_lr(optimizer, lrm)
        loss_value, gnorm, _ = packed_step(ctx, train, model, optimizer, batches, accum, step + 1)
        meter.add(accum * s.device_batch_size * seq_len)
        ctx.log_step(step + 1, meter, loss=loss_value, lr_mult=lrm, grad_norm=gnorm)
        bar.update(step + 1, loss=loss_value)
        ctx.end_step(step + 1, model, optimizer, {})
    bar.close()
    ctx.save(s.steps, model, optimizer, {}, done=True)
    ctx.summary.update(steps=s.steps, tokens=s.steps * s.total_batch_tokens, final_loss=loss_value)


def _forever(items):
    while True:
        yield from items


def pack(docs, batch_size: int, seq_len: int, rank: int, world_size: int):
    """Concatenate token lists into a stream; yield this rank's (inputs (B, T), targets (B, T), None) per step
    (no position: a resumed midtrain replays the stream).

    A step takes B * T * world_size + 1 tokens; rank r gets rows [r*B, (r+1)*B) of them."""
    need, buffer = batch_size * seq_len * world_size + 1, []
    for ids in docs:
        buffer += ids
        while len(buffer) >= need:
            rows = torch.tensor(buffer[rank * batch_size * seq_len:(rank + 1) * batch_size * seq_len + 1])
            buffer = buffer[need - 1:]
            yield rows[:-1].view(batch_size, seq_len), rows[1:].view(batch_size, seq_len), None
