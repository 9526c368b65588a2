"""Stage rl: reinforcement learning from rewards, with any algorithm plugin (on- or off-policy updates).

    stages:
      rl: {task: {name: arithmetic}, algorithm: {name: grpo}, rewards: [{name: gsm8k}], steps: 100}

One step:
  1. rollouts: `examples_per_step` training prompts (split across ranks) x
     `rollout.samples` completions each, sampled with the KV cache (each prompt
     prefilled once, its cache shared by its samples);
  2. rewards: every reward plugin scores every decoded completion; the total
     is the weighted sum, each reward's mean is tracked on its own;
  3. advantages: the algorithm turns the (P, G) rewards of the whole step (all
     ranks, gathered) into advantages, so they never depend on the world size;
  4. updates: `updates.epochs` passes over the rollouts, each in
     `updates.minibatches` optimizer steps (default 1 x 1: one step), each
     minibatch's loss the algorithm's with its token and sequence counts over
     all ranks, backward in micro-batches of `device_batch_size` sequences
     (none for rows with advantage 0 when the algorithm declares that its
     loss gives them no gradient: `zero_advantage_inert`);
     lr = init_lr_frac * (1 - step/steps). old_logp / ref_logp (when the
     algorithm needs them), ratios, clip fraction, KLs and entropy: rl_update.py.
Steps 1-3, and group filtering (DAPO's dynamic sampling) for an algorithm that
sets `filter_groups`: rl_batch.py.
A task that adapts (a curriculum: rlkit.lib.text.task.Task.observe) sees each
step's figures and may change what it serves next; its state is checkpointed.
pass@1..k on held-out problems before training, every `eval.every` steps and
at the end, sampled at the rollout's temperature and top-k with the same
random numbers each time, so each later pass@1 is also shown as a paired
change from the start with its standard error (the start's per-problem values
are checkpointed, so this survives --resume).

This module is the plugin: the config, evals, report and the registration; the loop is rl_run.py and the
checks rl_check.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import rlkit
from rlkit.core.config import PluginRef, RewardRef, bounded, optional_plugin, plugin, plugin_list
from rlkit.lib.evaluation.evaltask import EvalTask, eval_reward
from rlkit.lib.tracking.report import fmt, tracked_change
from rlkit.core.stage import Stage


@dataclass
class Rollout:
    samples: int = bounded(16, ge=1)  # completions per prompt (the group size G)
    temperature: float = bounded(1.0, ge=0)
    top_k: int = bounded(50, ge=0)  # 0 keeps the whole vocabulary
    max_new_tokens: int = bounded(256, ge=1)  # an episode's tokens, the env's replies included
    max_turns: int = bounded(4, ge=1)  # with env: the model's turns an episode takes at most


@dataclass
class RLEval:
    every: int = bounded(60, ge=0)  # pass@k on held-out problems every N steps (0: only before and after)
    examples: int = bounded(400, ge=1)  # 0 would report pass@k measured on nothing
    k: int = bounded(8, ge=1)  # samples per problem: pass@1..k
    reward: Optional[PluginRef] = optional_plugin("reward")  # decides "correct" (left out: the task's own reward)


@dataclass
class Updates:
    epochs: int = bounded(1, ge=1)  # passes over each step's rollouts
    minibatches: int = bounded(1, ge=1)  # optimizer steps per pass (the step's rows split into this many slices)


@dataclass
class Reference:
    init: Optional[str] = None  # for ref_logp; default: the start checkpoint (LoRA: its base, adapters off, no copy)


@dataclass
class RLConfig:
    task: PluginRef = plugin("task")
    algorithm: PluginRef = plugin("algorithm", "grpo")
    rewards: list[RewardRef] = plugin_list("reward")
    env: Optional[PluginRef] = optional_plugin("env")  # multi-turn episodes on the task's examples, rewarded by the env
    optimizer: PluginRef = plugin("optimizer", "muon")
    tools: list[PluginRef] = plugin_list("tool")  # tools the rollouts (and the held-out eval) may call
    rollout: Rollout = field(default_factory=Rollout)
    steps: int = bounded(500, ge=1)
    examples_per_step: int = bounded(16, ge=1)  # prompts per step, all ranks
    device_batch_size: int = bounded(8, ge=1)  # sequences per forward/backward micro-batch
    updates: Updates = field(default_factory=Updates)
    reference: Reference = field(default_factory=Reference)  # loaded only for an algorithm that needs ref_logp
    max_refills: int = bounded(4, ge=0)  # group filtering (an algorithm's filter_groups): most extra sampling rounds
    init_lr_frac: float = bounded(0.05, ge=0)
    reward_timeout: float = bounded(10.0, ge=0)  # seconds one reward call may take on one completion (0: no limit)
    log_every: int = bounded(1, ge=1)
    save_every: int = bounded(60, ge=0)
    eval: RLEval = field(default_factory=RLEval)


def check(cfg, setup) -> None:
    """Every value run() uses, before any entry runs: rl_check.py (it tries the algorithm and the optimizer on tiny
    tensors, so it is imported with torch when the experiment is checked, not when plugins are listed)."""
    from rlkit.plugins.stages import rl_check

    rl_check.check(cfg, setup)


def run(ctx, start):
    """Train: the loop is rl_run.py, imported (with torch) when the stage runs."""
    from rlkit.plugins.stages import rl_run

    return rl_run.run(ctx, start)


def evals(cfg: RLConfig) -> list[EvalTask]:
    """The held-out pass@k this stage measures: its task's test split at the rollout's temperature and top-k."""
    r = cfg.rollout
    return [EvalTask(name=cfg.task.name, args=dict(cfg.task.args), k=cfg.eval.k, temperature=r.temperature,
                     top_k=r.top_k, max_new_tokens=r.max_new_tokens, examples=cfg.eval.examples,
                     **eval_reward(cfg.eval.reward), tools=list(cfg.tools), env=cfg.env, max_turns=r.max_turns)]


def report(summary: dict, tracked: dict) -> list[str]:
    """Reward first -> last, pass@1 and pass@k before -> after with the paired change, lengths, speeds."""
    out = [f"{m}: {tracked_change(tracked, m)}" for m in tracked if m == "reward" or m.startswith("reward/")]
    if "reward_start" in summary:  # single steps are noisy: the first and last tenth of the steps
        out.append(f"reward, mean of the first / last {summary['reward_window']} steps: "
                   f"{fmt(summary['reward_start'])} -> {fmt(summary['reward_end'])}")
    before, after = summary.get("eval_before", {}), summary.get("eval_after", {})
    ks = sorted(int(k[5:]) for k in after if k.startswith("pass@"))
    for key in [f"pass@{k}" for k in sorted({ks[0], ks[-1]})] if ks else []:  # pass@1 and pass@k
        out.append(f"held-out {key}: {fmt(before.get(key))} before -> {fmt(after[key])} after")
    if "delta@1" in after:  # paired over the same problems and random numbers (core/evaluate.py)
        out.append(f"pass@1 change: {after['delta@1']:+.4f} ± {after['delta_se']:.4f} (paired standard error)")
    if "completion_len" in tracked:
        c = tracked["completion_len"]
        out.append(f"completion length (tokens): {fmt(c['first'])} -> {fmt(c['last'])}, mean {fmt(c['mean'])}")
    if "entropy" in tracked:
        e, parts = tracked["entropy"], [f"{m} mean {fmt(tracked[m]['mean'])}" for m in ("clip_frac", "kl_old")
                                        if m in tracked and tracked["ratio_max"]["max"] != 1.0]
        kl = [f"KL to the reference {fmt(tracked['kl_ref']['first'])} -> {fmt(tracked['kl_ref']['last'])}"] \
            if "kl_ref" in tracked else []
        out.append(f"policy entropy (nats/token): {fmt(e['first'])} -> {fmt(e['last'])}" +
                   "".join(f"; {p}" for p in parts + kl))
    if "mismatch/logratio_mean" in tracked:  # the sampler's log-probs against the training forward's (rl_stats.py)
        mean, most, kl = (tracked[f"mismatch/{m}"] for m in ("logratio_mean", "logratio_max", "kl"))
        out.append(f"sampling/training mismatch (|log p_train - log p_sample|, sampled tokens): mean "
                   f"{fmt(mean['mean'])}, max {fmt(most['max'])}; KL (k3) mean {fmt(kl['mean'])}")
    if "env/turns" in tracked:  # episodes (rlkit.lib.generation.episodes)
        t, n = tracked["env/turns"], tracked["env/episode_len"]
        out.append(f"episodes: turns {fmt(t['first'])} -> {fmt(t['last'])}, length {fmt(n['first'])} -> "
                   f"{fmt(n['last'])} tokens, ended by the env {fmt(tracked['env/done']['mean'])} (mean)")
    if "groups_filtered" in tracked and tracked["groups_filtered"]["max"] > 0:
        out.append(f"group filtering: {fmt(tracked['groups_filtered']['mean'])} groups dropped per step, "
                   f"{fmt(tracked['refill_rounds']['mean'])} refill rounds (means)")
    speeds = [f"{m.split('_')[0]} {fmt(tracked[m]['mean'])}" for m in ("rollout_tok_s", "train_tok_s") if m in tracked]
    if speeds:
        out.append(f"tokens/s (mean): {', '.join(speeds)}")
    return out


@rlkit.hookimpl
def rlkit_stages():
    return {"rl": Stage(config=RLConfig, run=run, check=check, report=report, evals=evals)}
