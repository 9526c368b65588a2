"""The rl stage's run (its config: rl.py; its checks: rl_check.py): one step of rollouts, rewards, advantages
and updates at a time, as rl.py's docstring lists them, with held-out pass@k before, every `eval.every`
steps and at the end.
"""
from __future__ import annotations

import random
import time

from rlkit.core.context import StageContext
from rlkit.core.handoff import Checkpoint
from rlkit.core.dist import print0
from rlkit.lib.evaluation.evaltask import headline
from rlkit.lib.evaluation.evaluate import run_task
from rlkit.lib.text.task import observe, restore_task, task_state
from rlkit.lib.training.optim import lr_plan, lr_schedule, set_lr
from rlkit.core.policy import flops_per_token
from rlkit.lib.training.progress import inner_report, progress
from rlkit.lib.training.speed import peak_flops
from rlkit.plugins.stages import rl_update
from rlkit.plugins.stages.rl_batch import collect
from rlkit.plugins.stages.rl_check import build_algorithm, check_fits
from rlkit.plugins.stages.rl_stats import Tally
from rlkit.plugins.stages.rl import RLConfig, evals


def run(ctx: StageContext[RLConfig], start: Checkpoint | None) -> Checkpoint:
    s, r = ctx.cfg, ctx.cfg.rollout
    session = ctx.session(start, s.optimizer)
    model, tokenizer, optimizer = session.model, session.tokenizer, session.optimizer
    print0(f"[{ctx.name}] {lr_plan(s, optimizer)}")  # init_lr_frac scales explicit rates too
    algorithm = build_algorithm(s, ctx.plugins, f"stages.{ctx.name}")
    # with env: the episode's reward, one term (rl_batch.py)
    rewards = [(ref.name, ref.weight, ctx.plugin("reward", ref)) for ref in s.rewards] or [("env", 1.0, None)]
    train_task, test_task = ctx.task(s.task, "train"), ctx.task(s.task, "test")
    world, G = ctx.dist.world_size, r.samples
    order = random.Random(ctx.seed()).sample(range(len(train_task)), len(train_task))
    needs_ref = "ref_logp" in algorithm.needs
    reference = rl_update.reference_model(ctx, model, tokenizer, start) if needs_ref else None
    train = session.begin(compile=False, rollouts=True)  # fsdp: sharded, with a full copy to sample from
    resumed, start_step = session.extra, session.start_step  # what saved_state kept ({} when fresh)
    restore_state(algorithm, train_task, resumed)
    check_fits(ctx, tokenizer, train_task, r.max_new_tokens)  # with env: its first messages
    print0(f"[{ctx.name}] {s.steps} steps x {s.examples_per_step} prompts x {G} samples, algorithm "
           f"{s.algorithm.name}, rewards {', '.join(f'{n} (x{w:g})' for n, w, _ in rewards)}")
    kept = kept_state(ctx, session, tokenizer, test_task)
    baseline, history = kept["eval_baseline"], kept["rewards"]

    flops, peak = flops_per_token(model), peak_flops(ctx.device, ctx.dtype, ctx.experiment.get("mfu_peak_flops"))[0]
    tokens, bar = 0, progress(ctx.name, s.steps, start=start_step)
    for step in range(start_step, s.steps):
        lrm = lr_schedule(s, step)
        algorithm.at(f"at {ctx.name} step {step + 1}")  # for its error lines
        set_lr(optimizer, lrm)
        # 1-3. rollouts, rewards, advantages over the whole step (and group filtering, if the algorithm asks)
        t0 = time.perf_counter()
        batch = collect(ctx, session.sampler(step), tokenizer, algorithm, rewards, train_task, order, step,
                        kept["refill_prompts"])
        session.stop_mid_step("after its rollouts")  # Ctrl-C: the rollouts are dropped, no weight has changed
        inner_report(ctx, step + 1, f"rollouts done ({s.examples_per_step} prompts x {G}); updating", t0, t0)
        kept["refill_prompts"] += batch.stats.pop("refill_prompts")
        # 4. the updates: epochs x minibatches optimizer steps, each normalised by its own counts
        t1 = time.perf_counter()
        rows = batch.training_rows(ctx.device)
        learner = rl_update.Learner(ctx, train, model, optimizer, algorithm, reference, step)
        tally = rl_update.update(learner, rows) if batch.stats["groups_kept"] else Tally(ctx.device)
        train_s = time.perf_counter() - t1
        # metrics (all ranks' means)
        stats, useful = step_stats(ctx, batch, rows, tally), batch.prompt_tokens + int(rows.mask.sum())
        stats.update(lr_mult=lrm, **speeds(ctx, stats, tally, rows, useful, train_s, flops / peak))
        stats.update(observe(train_task, step + 1, stats))  # a task that adapts (a curriculum) sees the step
        tokens += useful * world
        history.append(float(stats["reward"]))
        done = step + 1
        log_line(ctx, done, stats, history)
        bar.update(done, reward=stats["reward"])
        if s.eval.every and done % s.eval.every == 0 and done != s.steps:
            run_eval(ctx, session.sampler(), tokenizer, test_task, step=done, baseline=baseline)
        session.end_step(done, saved_state(algorithm, kept, train_task))
    bar.close()

    handle = session.save(s.steps, saved_state(algorithm, kept, train_task), done=True)
    run_eval(ctx, session.sampler(), tokenizer, test_task, step=s.steps, baseline=baseline)
    summarize(ctx, history, tokens)
    return handle


def summarize(ctx, history: list[float], tokens: int) -> None:
    """The report card's reward line: the mean step reward over the first and the last tenth of the steps."""
    tenth = max(1, len(history) // 10)
    ctx.summary.update(steps=ctx.cfg.steps, tokens=tokens, reward_window=tenth,
                       reward_start=sum(history[:tenth]) / tenth, reward_end=sum(history[-tenth:]) / tenth)


def kept_state(ctx, session, tokenizer, test_task) -> dict:
    """What a checkpoint keeps for --resume: per-problem pass@1 before RL (later evals are paired with it),
    the step rewards, and the refill prompts group filtering drew (they shift later steps' prompts)."""
    if session.resumed:
        extra = session.extra
        return {"eval_baseline": extra.get("eval_baseline"), "rewards": extra.get("rewards", []),
                "refill_prompts": extra.get("refill_prompts", 0)}
    return {"eval_baseline": run_eval(ctx, session.sampler(), tokenizer, test_task, step=0)["per_problem"],
            "rewards": [],
            "refill_prompts": 0}


def speeds(ctx, stats: dict, tally, rows, useful: int, train_s: float, flops_over_peak: float) -> dict:
    """Tokens/s of the rollouts and the update (all ranks) and the update's MFU; useful: this rank's prompt and
    completion tokens, padding left out."""
    world, sampled = ctx.dist.world_size, float(rows.mask.sum())
    # a forward without autograd costs a third of a trained token's FLOPs; no forward at all, none
    trained = useful - 2 * tally.forward_only_tokens / 3 - tally.no_forward_tokens
    return {"rollout_tok_s": sampled * world / stats["rollout_s"], "train_tok_s": useful * world / train_s,
            "train_s": train_s, "mfu": trained / train_s * flops_over_peak}


def step_stats(ctx, batch, rows, tally) -> dict:
    """The step's rewards, group and time counts, advantage spread and completion length (all ranks' means),
    then what the update tracked: one all-reduce for all of them (rl_stats.py)."""
    adv = batch.adv
    means = {**batch.stats, "adv_std": adv.float().std() if adv.numel() > 1 else 0.0,
             "completion_len": float(rows.mask.sum()) / max(len(rows.mask), 1)}
    return tally.reduce(ctx, means)


def log_line(ctx, done: int, stats: dict, history: list[float]) -> None:
    """Every `log_every` steps: the reward as the mean since the last line (one step is noisy); every step is tracked."""
    s = ctx.cfg
    if done % s.log_every == 0 or done == s.steps:
        recent = history[-(done % s.log_every or s.log_every):]
        reward = f"{sum(recent) / len(recent):.3f}" + (f" ({len(recent)}-step mean)" if len(recent) > 1 else "")
        print0(f"[{ctx.name}] step {done:4d}/{s.steps} | reward {reward} | len {stats['completion_len']:.1f} | "
               f"rollout {stats['rollout_tok_s']:,.0f} tok/s | train {stats['train_tok_s']:,.0f} tok/s | "
               f"lr x{stats['lr_mult']:.4f}")
    ctx.tracker.metrics(stats, step=done, stage=ctx.name)


def run_eval(ctx, model, tokenizer, test_task, step: int, baseline: list[float] | None = None) -> dict:
    """pass@1..k on the held-out problems; the same seed every time (common random numbers), so the change
    from `baseline` (per-problem pass@1 at step 0) is measured paired, with its standard error. The same
    function as `rlkit eval` and eval stages (run_task)."""
    s, r = ctx.cfg, ctx.cfg.rollout
    (spec,) = evals(s)
    result = run_task(ctx.runtime, model, tokenizer, test_task, spec, examples=spec.examples, seed=ctx.seed(),
                      baseline=baseline, timeout=s.reward_timeout)
    k = s.eval.k if r.temperature > 0 else 1
    change = f" ({result['delta@1']:+.3f} ± {result['delta_se']:.3f} vs step 0)" if "delta@1" in result else ""
    print0(f"[{ctx.name}] eval at step {step}: pass@1 {result['pass@1']:.3f}{change} | pass@{k} {result[f'pass@{k}']:.3f} "
           f"| {s.eval.examples} held-out problems, T={r.temperature:g}")
    tracked = {key: v for key, v in result.items() if key.startswith(("pass@", "delta"))}
    ctx.tracker.metrics(tracked, step=step, stage=ctx.name)
    for question, answer, value in result["samples"][:2]:
        ctx.tracker.text("samples", f"Q: {question}\nA: {answer}\nreward: {value:g}", step=step, stage=ctx.name)
    key = "eval_before" if step == 0 else "eval_after"
    ctx.summary[key] = {k_: v for k_, v in result.items() if k_ not in ("samples", "per_problem", "kind", "title")}
    if step == s.steps:  # the report card's table: this entry's final figures
        ctx.summary["evals"] = {result["title"]: headline(result)}
    return result


def saved_state(algorithm, kept: dict, task) -> dict:
    """What a checkpoint keeps besides weights and optimizer: `kept`, the algorithm's and the task's state."""
    return {**kept, "algorithm": algorithm.state_dict(), "task": task_state(task)}


def restore_state(algorithm, task, extra: dict) -> None:
    """On --resume, the algorithm's own state (an object with load_state_dict) and the task's (a curriculum's
    level) from what saved_state kept."""
    if "algorithm" in extra and hasattr(algorithm, "load_state_dict"):
        algorithm.load_state_dict(extra["algorithm"])
    restore_task(task, extra.get("task"))
