"""The sft stage's run (the config and its checks: sft.py): conversations one a row, padded, trained where the
loss mask is 1; then greedy accuracy on held-out problems.
"""
from __future__ import annotations

import random

import torch

from rlkit.lib.training import loop as training
from rlkit.core.context import StageContext
from rlkit.core.handoff import Checkpoint
from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.evaluate import run_task
from rlkit.lib.evaluation.evaltask import task_reward
from rlkit.lib.training.optim import lr_plan, lr_schedule, set_lr
from rlkit.core.policy import flops_per_token
from rlkit.lib.training.progress import progress, step_passes
from rlkit.lib.training.speed import Meter
from rlkit.lib.training.loop import grad_norm
from rlkit.plugins.stages.sft import SFTConfig, evals


def run(ctx: StageContext[SFTConfig], start: Checkpoint | None) -> Checkpoint:
    s = ctx.cfg
    session = ctx.session(start, s.optimizer)
    model, tokenizer, optimizer = session.model, session.tokenizer, session.optimizer
    print0(f"[{ctx.name}] {lr_plan(s, optimizer)}")  # init_lr_frac scales explicit rates too
    train_task = ctx.task(s.task, "train")
    if s.eval_examples:  # a task without a reward of its own, and no eval_reward, fails now, not after training
        task_reward(ctx.runtime, ctx.task(s.task, "test"), evals(s)[0], f"stages.{ctx.name}.eval_reward")
    world, B = ctx.dist.world_size, s.device_batch_size
    accum = s.examples_per_step // (B * world)  # divisibility checked up front (check)
    order = random.Random(ctx.seed()).sample(range(len(train_task)), len(train_task))  # one epoch's order
    check_fits(tokenizer, train_task, ctx.seq_len, f"stages.{ctx.name}.task '{s.task.name}'")
    start_step = session.start_step
    # dynamic: batches are padded to their longest row; rollouts: fsdp keeps a full copy for the final eval
    train = session.begin(dynamic=True, rollouts=bool(s.eval_examples))
    meter = Meter(ctx.device, ctx.dtype, flops_per_token(model), ctx.experiment.get("mfu_peak_flops"))
    print0(f"[{ctx.name}] {s.steps} steps x {s.examples_per_step} conversations ({accum} passes of {B}), "
           f"{len(train_task):,} training examples")

    loss_value, tokens, bar = float("nan"), 0, progress(ctx.name, s.steps, start=start_step)
    for step in range(start_step, s.steps):
        lrm = lr_schedule(s, step)
        set_lr(optimizer, lrm)
        # this step's conversations: all ranks' slices together are examples_per_step consecutive ones
        first = step * s.examples_per_step + ctx.dist.rank * B * accum
        rendered = [tokenizer.render_conversation(train_task[order[(first + j) % len(order)]]["messages"],
                                                  max_len=ctx.seq_len + 1) for j in range(B * accum)]
        batches = [collate(rendered[m * B:(m + 1) * B]) for m in range(accum)]
        num_tokens = ctx.sum_over_ranks(sum((y >= 0).sum() for _, y in batches).to(ctx.device))
        total = torch.zeros((), device=ctx.device)
        for m in step_passes(ctx, session, accum, step + 1):  # reported when slow; Ctrl-C stops after a pass
            x, y = batches[m][0].to(ctx.device), batches[m][1].to(ctx.device)
            with ctx.no_sync(train, last=m == accum - 1), ctx.autocast():
                per_token = train(x, y, loss_reduction="none")  # (B, T), 0 where y == -1
                loss = per_token.sum() / num_tokens * world  # DDP averages over ranks: undo it
            loss.backward()
            total += loss.detach() / world
            meter.add(x.numel())
            tokens += x.numel() * world  # padded tokens processed, all ranks
        gnorm = grad_norm(model)
        loss_value = ctx.mean_over_ranks(total) * world
        training.check_step(ctx, loss_value, gnorm, step + 1)  # before the update: saved weights stay finite
        optimizer.step()
        model.zero_grad(set_to_none=True)
        training.log_step(ctx, step + 1, meter, loss=loss_value, lr_mult=lrm, grad_norm=gnorm)
        bar.update(step + 1, loss=loss_value)
        session.end_step(step + 1, {})
    bar.close()

    handle = session.save(s.steps, {}, done=True)
    if s.eval_examples:
        held_out_accuracy(ctx, session.sampler(), tokenizer)
    ctx.summary.update(steps=s.steps, tokens=tokens, final_loss=loss_value)
    return handle


def held_out_accuracy(ctx, model, tokenizer) -> None:
    """Greedy accuracy on the task's test problems, scored by `eval_reward`."""
    s = ctx.cfg
    (spec,) = evals(s)
    result = run_task(ctx.runtime, model, tokenizer, ctx.task(s.task, "test"), spec, examples=spec.examples,
                      seed=ctx.seed())  # greedy: the seed changes nothing
    print0(f"[{ctx.name}] held-out accuracy (greedy, {s.eval_examples} problems): {result['pass@1']:.3f}")
    for question, answer, score in result["samples"][:2]:
        print0(f"[{ctx.name}] sample: {question[:80]!r} -> {answer[:120]!r} ({score:g})")
        ctx.tracker.text("samples", f"Q: {question}\nA: {answer}\nreward: {score:g}", step=s.steps, stage=ctx.name)
    ctx.tracker.metrics({"accuracy": result["pass@1"]}, step=s.steps, stage=ctx.name)
    ctx.summary.update(accuracy=result["pass@1"], evals={result["title"]: {"accuracy": result["pass@1"]}})


def check_fits(tokenizer, task, seq_len: int, what: str, sample: int = 256) -> None:
    """Conversations longer than the context lose the end of their answers: refuse when that is common
    (over 10% of a sample), warn when it is rare."""
    lengths = [len(tokenizer.render_conversation(task[i]["messages"])[0]) for i in range(min(sample, len(task)))]
    cut = sum(n > seq_len + 1 for n in lengths) / len(lengths)
    if cut > 0.1:
        raise RlkitError(f"model.seq_len: {seq_len} is too short for {what}: {cut:.0%} of its "
                         f"conversations are longer (up to {max(lengths)} tokens), so their answers would be cut; "
                         f"set model.seq_len to at least {max(lengths) - 1}")
    if cut > 0:
        print0(f"[{what}] note: {cut:.1%} of the conversations exceed model.seq_len {seq_len} and are truncated")


def collate(rendered: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (ids, mask) pairs into inputs (B, T) and targets (B, T); targets are -1 where the mask is 0."""
    T = max(len(ids) for ids, _ in rendered) - 1
    x = torch.zeros(len(rendered), T, dtype=torch.long)
    y = torch.full((len(rendered), T), -1, dtype=torch.long)
    for b, (ids, mask) in enumerate(rendered):
        ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
        n = len(ids) - 1
        x[b, :n] = ids_t[:-1]
        y[b, :n] = torch.where(mask_t[1:] == 1, ids_t[1:], -1)
    return x, y
