"""The midtrain stage's run (the config and its checks: midtrain.py): the tasks' conversations, shuffled with the
entry's seed, rendered and packed into rows; then pretrain's packed steps.
"""
from __future__ import annotations

import random

import torch

from rlkit.lib.training import loop as training
from rlkit.core.context import StageContext
from rlkit.core.handoff import Checkpoint
from rlkit.core.dist import print0
from rlkit.lib.training.optim import lr_plan, lr_schedule, set_lr
from rlkit.core.policy import flops_per_token
from rlkit.lib.training.progress import progress
from rlkit.lib.training.speed import Meter
from rlkit.plugins.stages.midtrain import MidtrainConfig
from rlkit.plugins.stages.pretrain import grad_accum_steps
from rlkit.plugins.stages.pretrain_run import packed_step


def run(ctx: StageContext[MidtrainConfig], start: Checkpoint | None) -> Checkpoint:
    s = ctx.cfg
    session = ctx.session(start, s.optimizer)
    model, tokenizer, optimizer = session.model, session.tokenizer, session.optimizer
    print0(f"[{ctx.name}] {lr_plan(s, optimizer)}")  # init_lr_frac scales explicit rates too
    seq_len, world = ctx.seq_len, ctx.dist.world_size
    accum = grad_accum_steps(s.total_batch_tokens, s.device_batch_size, seq_len, world)
    tasks = [ctx.task(ref, "train", f"tasks[{i}]") for i, ref in enumerate(s.tasks)]
    mixture = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
    random.Random(ctx.seed()).shuffle(mixture)
    tools = getattr(tokenizer, "tool_tokens", None)
    conversations = (_with_outputs(tokenizer.render_conversation(tasks[t][i]["messages"])[0], tools)
                     for t, i in _forever(mixture))
    batches = pack(conversations, s.device_batch_size, seq_len, ctx.dist.rank, world)
    start_step = session.start_step
    for _ in range(start_step * accum):  # resume: replay the (cheap, deterministic) stream to where it was
        next(batches)
    train = session.begin()  # compiled per model.compile, DDP under torchrun
    meter = Meter(ctx.device, ctx.dtype, flops_per_token(model), ctx.experiment.get("mfu_peak_flops"))
    print0(f"[{ctx.name}] {s.steps} steps x {s.total_batch_tokens:,} tokens from {len(mixture):,} conversations "
           f"({len(tasks)} task{'s' if len(tasks) > 1 else ''})")

    loss_value, bar = float("nan"), progress(ctx.name, s.steps, start=start_step)
    for step in range(start_step, s.steps):
        lrm = lr_schedule(s, step)
        set_lr(optimizer, lrm)
        loss_value, gnorm, _ = packed_step(ctx, session, train, batches, accum, step + 1)
        meter.add(accum * s.device_batch_size * seq_len)
        training.log_step(ctx, step + 1, meter, loss=loss_value, lr_mult=lrm, grad_norm=gnorm)
        bar.update(step + 1, loss=loss_value)
        session.end_step(step + 1, {})
    bar.close()
    ctx.summary.update(steps=s.steps, tokens=s.steps * s.total_batch_tokens, final_loss=loss_value)
    return session.save(s.steps, {}, done=True)


def _forever(items):
    while True:
        yield from items


def _with_outputs(ids: list[int], tools) -> list[int]:
    """The conversation's ids, each tool output token (its wrapper included) as -1 - id: packed, its target is
    then -1, out of the loss (a tool writes it at sampling time, the model does not); unchanged without tools."""
    if tools is None or tools.call_end not in ids:
        return ids
    start, end, out, inside = list(tools.output_start), list(tools.output_end), list(ids), None
    for i in range(len(ids)):
        if inside is None and ids[i:i + len(start)] == start:
            inside = i
        if inside is not None and i >= inside + len(start) and ids[i - len(end) + 1:i + 1] == end:
            out[inside:i + 1] = [-1 - t for t in ids[inside:i + 1]]
            inside = None
    return out


def pack(docs, batch_size: int, seq_len: int, rank: int, world_size: int):
    """Concatenate token lists into a stream; yield this rank's (inputs (B, T), targets (B, T), None) per step
    (no position: a resumed midtrain replays the stream). A token given as -1 - id (_with_outputs) is id as an
    input and -1 as a target (out of the loss).

    A step takes B * T * world_size + 1 tokens; rank r gets rows [r*B, (r+1)*B) of them."""
    need, buffer = batch_size * seq_len * world_size + 1, []
    for ids in docs:
        buffer += ids
        while len(buffer) >= need:
            rows = torch.tensor(buffer[rank * batch_size * seq_len:(rank + 1) * batch_size * seq_len + 1])
            buffer = buffer[need - 1:]
            inputs, targets = rows[:-1].view(batch_size, seq_len), rows[1:].view(batch_size, seq_len)
            yield torch.where(inputs < 0, -1 - inputs, inputs), targets.clamp(min=-1), None
