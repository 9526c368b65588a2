"""The rl stage's checks, made before any entry runs (and again once the tokenizer exists), and its algorithm.

Every value run() uses: counts and ranges, the algorithm (built behind its guard, its methods called once on
a tiny batch: rlkit/lib/training/guard.py), the optimizer on a stand-in model, a reference checkpoint, the
task's rows, each reward called once on the task's first example (rlkit/lib/evaluation/trial.py), and
rollouts (prompt + max_new_tokens) against model.seq_len.
"""
from __future__ import annotations

from rlkit.lib.training.algorithm import Algorithm
from rlkit.lib.training.guard import check_contract, guard
from rlkit.core.errors import RlkitError
from rlkit.core.handoff import Checkpoint
from rlkit.lib.training.optim import check_optimizer
from rlkit.core.stage import divides
from rlkit.lib.evaluation.trial import build_task, sample, try_rewards
from rlkit.lib.generation.episodes import episodes
from rlkit.lib.text.task import prompt_messages


def check(cfg, setup) -> None:
    if not cfg.rewards and cfg.env is None:
        raise RlkitError(f"{setup.where}.rewards: empty; list at least one, e.g. [{{name: <reward>}}] "
                         f"(installed: {', '.join(sorted(setup.plugins.tables['reward']))}), or give an env")
    if cfg.env is not None and (cfg.rewards or cfg.eval.reward is not None):
        key = "rewards" if cfg.rewards else "eval.reward"
        raise RlkitError(f"{setup.where}.{key}: an entry with env: '{cfg.env.name}' is rewarded by its env, in "
                         f"training and in its eval; leave {key} out")
    rows = cfg.examples_per_step // setup.world_size * cfg.rollout.samples
    if cfg.updates.minibatches > rows:
        raise RlkitError(f"{setup.where}.updates.minibatches: {cfg.updates.minibatches} is more than the "
                         f"{rows} completions each process trains on per step; use at most {rows}")
    if cfg.reference.init is not None:  # a missing reference fails now, not after the entries before it
        Checkpoint.open(cfg.reference.init, f"{setup.where}.reference.init")
    divides(setup, "examples_per_step", cfg.examples_per_step, setup.world_size, "the number of processes")
    algorithm = build_algorithm(cfg, setup.plugins, setup.where)  # cheap, no model: its own checks apply now
    need = algorithm.min_samples
    if cfg.rollout.samples < need:
        raise RlkitError(f"{setup.where}.rollout.samples: algorithm '{cfg.algorithm.name}' needs at least "
                         f"{need} samples per prompt (got {cfg.rollout.samples})")
    check_contract(algorithm, cfg.rollout.samples, cfg.rollout.max_new_tokens)  # its methods, on a tiny batch
    check_optimizer(cfg.optimizer, setup)
    task = build_task(setup.plugins, cfg.task, "train", f"{setup.where}.task", setup.base_dir)  # its rows, before any model
    try_rewards(setup.plugins, cfg.rewards, task, f"{setup.where}.rewards")  # each reward, once, on its first example
    env = env_of(cfg, setup.plugins, setup.where)
    if env is not None:  # reset and one step with the reference reply, on its first example
        env.trial(*sample(task))
    check_rollout_fits(cfg, setup, task)


def check_rollout_fits(cfg, setup, task) -> None:
    """prompt + max_new_tokens must fit model.seq_len. Prompt lengths are counted in tokens, so exactly only
    once the tokenizer exists: from `init:` in `rlkit check`, else right after the entry that trains it (the
    pipeline checks the later entries again then, before the next entry, e.g. a long pretrain, starts). Before
    that, only a completion that leaves no room for any prompt is refused: a bound in bytes would refuse runs
    that fit, since a BPE token holds several bytes."""
    where, seq_len = f"{setup.where}.rollout.max_new_tokens", setup.model.seq_len
    if cfg.rollout.max_new_tokens >= seq_len:
        raise RlkitError(f"{where}: {cfg.rollout.max_new_tokens} new tokens leave no room for a prompt in "
                         f"model.seq_len {seq_len}; use fewer or raise model.seq_len")
    if setup.tokenizer is None:
        return
    fits(where, longest_prompt(setup.tokenizer, task, env_of(cfg, setup.plugins, setup.where)),
         cfg.rollout.max_new_tokens, seq_len)


def env_of(cfg, plugins, where: str):
    """The entry's Episodes (rlkit.lib.generation.episodes), or None without env."""
    return episodes(plugins, cfg.env, cfg.rollout.max_turns, f"{where}.env")


def build_algorithm(cfg, plugins, where: str) -> Algorithm:
    """The algorithm plugin's object as an `Algorithm`: behind the guard (rlkit/lib/training/algorithm.py)
    that checks every call and supplies the defaults a duck-typed plugin leaves out."""
    factory = plugins.get("algorithm", cfg.algorithm.name, f"{where}.algorithm.name")
    try:
        algorithm = factory(**cfg.algorithm.args)
    except RlkitError as e:
        raise RlkitError(f"{where}.algorithm: {e}") from e
    except Exception as e:
        raise RlkitError(f"{where}.algorithm: plugin '{cfg.algorithm.name}' failed: {type(e).__name__}: {e}") from e
    algorithm = guard(algorithm, cfg.algorithm.name, f"{where}.algorithm")
    return algorithm


def check_fits(ctx, tokenizer, task, max_new_tokens: int) -> None:
    """A rollout (prompt + max_new_tokens) must fit the context the model was trained on (again here: a model
    plugin with a tokenizer of its own is known only now)."""
    env = env_of(ctx.cfg, ctx.plugins, f"stages.{ctx.name}")
    fits(f"stages.{ctx.name}.rollout.max_new_tokens", longest_prompt(tokenizer, task, env), max_new_tokens,
         ctx.seq_len)


def longest_prompt(tokenizer, task, env=None, sample: int = 256) -> int:
    """The most tokens a rendered prompt takes, over the task's first `sample` examples (with env, the first
    messages of its episodes: `sample` // 8 of them, reset with seed 0)."""
    if env is not None:
        firsts = [env.first_messages(task[i], 0) for i in range(min(sample // 8, len(task)))]
        return max(len(tokenizer.render_for_completion(messages)) for messages in firsts)
    return max(len(tokenizer.render_for_completion(prompt_messages(task[i]))) for i in range(min(sample, len(task))))


def fits(where: str, longest: int, max_new_tokens: int, seq_len: int) -> None:
    if longest >= seq_len:  # no number of new tokens would fit: the fix is the context, not max_new_tokens
        raise RlkitError(f"{where}: prompts reach {longest} tokens, which fill model.seq_len {seq_len} before any new "
                         f"token; raise model.seq_len above {longest} (or use a task with shorter prompts)")
    if longest + max_new_tokens > seq_len:
        raise RlkitError(f"{where}: prompts reach {longest} tokens, so {max_new_tokens} new tokens exceed model.seq_len "
                         f"{seq_len}; use at most {max(seq_len - longest, 0)} or raise model.seq_len")
