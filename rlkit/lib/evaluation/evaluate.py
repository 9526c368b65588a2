"""Held-out evaluation: pass@1..k by generation, and `run_task`, which evaluates any task as it declares.

For each problem we sample n completions (greedy when temperature is 0, then
n = 1), score each with the reward, count c correct (reward >= 1 - 1e-6 for a
binary reward, or > 0.5 in general), and estimate
    pass@j = 1 - C(n - c, j) / C(n, j)        for j = 1..n
(the unbiased estimator of Chen et al., 2021), averaged over problems. Each
rank scores its own slice of the problems; sums are all-reduced.

Sample r of problem i is drawn with a seed fixed by (seed, i, r), so two
evaluations with the same seed use the same random numbers (common random
numbers): where two models agree on a token they draw the same one. Given
`baseline`, the per-problem pass@1 of an earlier evaluation with the same
seed (its 'per_problem'), the result also holds the paired change in pass@1
and its standard error, with d_i = pass@1_i - baseline_i:
    delta = mean(d),  se = std(d) / sqrt(n)
which is far smaller than the error of either estimate alone.

`run_task(rt, model, tokenizer, task, spec, examples=, seed=)` is the one entry point that eval stages,
the rl stage's in-training pass@k and `rlkit eval` share: a generative task goes to `evaluate`, a
multiple-choice one to rlkit.lib.evaluation.choice. `rt` is a rlkit.core.runtime.Runtime (a stage
passes ctx.runtime; a command builds one).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from rlkit.core.config import PluginRef, bounded, one_of
from rlkit.core.errors import RlkitError
from rlkit.core.runtime import Runtime
from rlkit.lib.generation.sampling import generate
from rlkit.lib.evaluation.choice import MODES
from rlkit.lib.generation.episodes import episodes
from rlkit.lib.generation.tools import toolbox
from rlkit.lib.evaluation.scoring import score
from rlkit.lib.text.task import evaluation_of, prompt_messages


def pass_at(n: int, c: int, k: int) -> float:
    """Probability that at least one of k of the n samples is correct, given c of n were."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def evaluate(rt: Runtime, model, tokenizer, task, reward, *, examples: int, samples: int, temperature: float,
             top_k: int, max_new_tokens: int, prompts_per_batch: int = 32, seed: int = 0,
             baseline: list[float] | None = None, reward_name: str = "reward", timeout: float = 10.0,
             tools=None, env=None) -> dict:
    """{'pass@1': ..., 'pass@k': ..., 'reward': mean, 'length': mean completion tokens, 'samples': [...],
    'per_problem': pass@1 of every problem, all ranks'} and, with `baseline`, 'delta@1' and 'delta_se'; with
    `tools` (a Toolbox: rows may call them) also tool_metrics' figures, and 'length' counts sampled tokens only;
    with `env` (rlkit.lib.generation.episodes.Episodes: each completion is an episode, its reward the env's, no
    `reward`) also 'turns', the mean turns an episode."""
    model.eval()
    n = 1 if temperature == 0 else samples
    indices = list(range(min(examples, len(task))))[rt.dist.rank::rt.dist.world_size]
    sums = torch.zeros(n + 6, dtype=torch.float64)  # pass@1..n, reward, length, count, sum d, sum d^2, turns
    shown, per_problem = [], torch.zeros(min(examples, len(task)), dtype=torch.float64)
    calls = [[], [], []]  # with tools: each completion's calls, errors, forced tokens
    sampling = (n, temperature, top_k, max_new_tokens, tools, env)
    for start in range(0, len(indices), prompts_per_batch):
        part = indices[start:start + prompts_per_batch]
        batch = [task[i] for i in part]
        seeds = [seed * 1_000_003 + i * 997 + g for i in part for g in range(n)]
        out, texts, scored, questions = _sample(rt, model, tokenizer, batch, seeds, sampling,
                                                (reward_name, reward, timeout))
        if tools is not None:
            for kept, counts in zip(calls, (out.tool_calls, out.tool_errors, out.tool_forced)):
                kept += counts
        for p, i in enumerate(part):
            scores = scored[p * n:(p + 1) * n]
            correct = sum(score > 0.5 for score in scores)
            for j in range(1, n + 1):
                sums[j - 1] += pass_at(n, correct, j)
            sums[n] += sum(scores) / n
            sums[n + 1] += sum(int(out.mask[r].sum()) for r in range(p * n, (p + 1) * n)) / n  # sampled tokens only
            sums[n + 2] += 1
            sums[n + 5] += sum(len(row.rewards) for row in out.episodes[p * n:(p + 1) * n]) / n if env else 0
            per_problem[i] = correct / n
            if baseline is not None:
                d = correct / n - baseline[i]
                sums[n + 3] += d
                sums[n + 4] += d * d
            if len(shown) < 4:
                shown.append((questions[p], texts[p * n], scores[0]))
    model.train()
    return _result(rt, sums, n, shown, per_problem, baseline, calls if tools is not None else None, env is not None)


def _sample(rt, model, tokenizer, batch, seeds, sampling, scoring):
    """One batch of problems: (Rollout, each row's text, each row's score, each problem's question). sampling:
    (n, temperature, top_k, max_new_tokens, tools, env); scoring: (reward name, reward, timeout)."""
    n, temperature, top_k, max_new_tokens, tools, env = sampling
    name, reward, timeout = scoring
    if env is None:
        prompts, rows = [tokenizer.render_for_completion(prompt_messages(ex)) for ex in batch], None
    else:  # an episode's seed: its problem's first row's
        prompts, rows = env.start(batch, n, seeds[::n], tokenizer)
    with rt.autocast():
        out = generate(model, prompts, samples=n, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_k=top_k or None, stop_tokens=tokenizer.stop_ids, seeds=seeds, tools=tools, envs=rows)
    texts = [tokenizer.decode([t for t in c if t not in tokenizer.stop_ids]) for c in out.completions]
    if env is not None:
        questions = [rows[p * n].history[0]["content"] for p in range(len(batch))]
        return out, texts, [row.reward for row in rows], questions
    scores = score([(name, 1.0, reward)], texts, [ex for ex in batch for _ in range(n)], f"in the {rt.name} eval",
                   timeout)[name].tolist()  # guarded like training rewards
    return out, texts, scores, [ex["messages"][0]["content"] for ex in batch]


def _result(rt, sums, n: int, shown, per_problem, baseline, calls, episodes: bool) -> dict:
    """The figures from this rank's sums (module docstring), summed over ranks."""
    sums = rt.sum_over_ranks(sums.to(rt.device)).cpu()
    count = max(sums[n + 2].item(), 1)
    result = {f"pass@{j}": sums[j - 1].item() / count for j in range(1, n + 1)}
    result.update(reward=sums[n].item() / count, length=sums[n + 1].item() / count, samples=shown,
                  per_problem=rt.sum_over_ranks(per_problem.to(rt.device)).cpu().tolist())  # ranks' are disjoint
    if calls is not None:
        result.update(tool_figures(rt, *calls))
    if episodes:
        result["turns"] = sums[n + 5].item() / count
    if baseline is not None:
        mean = sums[n + 3].item() / count
        var = max(sums[n + 4].item() / count - mean * mean, 0.0) * count / max(count - 1, 1)
        result.update({"delta@1": mean, "delta_se": math.sqrt(var / count)})
    return result


TOOL_FIGURES = ("tool_calls", "tool_use", "tool_error_rate", "tool_forced")


def tool_figures(rt: Runtime, calls: list[int], errors: list[int], forced: list[int]) -> dict:
    """tool_metrics over every rank's completions (their counts summed over ranks)."""
    totals = torch.tensor([sum(calls), sum(errors), sum(forced), len(calls), sum(c > 0 for c in calls)],
                          dtype=torch.float64, device=rt.device)
    c, e, f, n, used = rt.sum_over_ranks(totals).cpu().tolist()
    n = max(n, 1)
    return {"tool_calls": c / n, "tool_use": used / n, "tool_error_rate": e / c if c else 0.0, "tool_forced": f / n}


# --- one task, either kind: what eval stages, the rl stage and `rlkit eval` all call ------------------

@dataclass
class EvalTask(PluginRef):
    """One task to evaluate and how (an item of an eval stage's `tasks:`; what a stage's `evals` returns)."""
    k: int = bounded(1, ge=1)  # generative: samples per problem, pass@1..k (greedy, k = 1, when temperature is 0)
    temperature: float = bounded(0.0, ge=0)
    top_k: int = bounded(50, ge=0)  # 0 keeps the whole vocabulary
    max_new_tokens: int = bounded(256, ge=1)
    examples: Optional[int] = bounded(None, ge=1)  # problems to evaluate (None: the stage's `examples`)
    reward: Optional[str] = None  # generative: the reward plugin that decides "correct" (None: the task's own)
    reward_args: dict[str, Any] = field(default_factory=dict)
    mode: str = one_of("letter", MODES)  # multiple choice: letter (chat models) | likelihood (base models)
    tools: list[PluginRef] = field(default_factory=list, metadata={"kind": "tool"})  # generative: tools rows may call
    env: Optional[PluginRef] = field(default=None, metadata={"kind": "env"})  # episodes, rewarded by the env
    max_turns: int = bounded(4, ge=1)  # with env: the model's turns an episode takes at most


def eval_reward(ref: PluginRef | None) -> dict:
    """EvalTask's reward keys for a stage's eval reward; none given: the task's own reward decides "correct"."""
    return {} if ref is None else {"reward": ref.name, "reward_args": dict(ref.args)}


def run_task(rt: Runtime, model, tokenizer, task, spec: EvalTask, *, examples: int, seed: int,
             baseline: list[float] | None = None, timeout: float = 10.0) -> dict:
    """Evaluate one task as it declares (rlkit.lib.text.task.evaluation_of). Generative: evaluate()'s result plus
    'accuracy' (greedy) or pass@1..k (sampled); multiple choice: accuracy, centred, chance. Both carry
    'centred' (a generative task's chance is 0, so its pass@1), which ChatCORE averages."""
    from rlkit.lib.evaluation.choice import evaluate_choice

    kind, _, title = evaluation_of(task, spec.name)
    _measures_something(spec, kind, min(examples, len(task)), f"stages.{rt.name}: task '{spec.name}'")
    if kind == "choice":
        result = evaluate_choice(rt, model, tokenizer, task, examples=examples, mode=spec.mode)
    else:
        where = f"stages.{rt.name}.tasks.{spec.name}"
        env = episodes(rt.plugins, spec.env, spec.max_turns, f"{where}.env")
        name, reward = ("env", None) if env else task_reward(rt, task, spec, f"{where}.reward")
        tools = toolbox(rt.plugins, spec.tools, tokenizer, f"{where}.tools")
        result = evaluate(rt, model, tokenizer, task, reward, examples=examples, samples=spec.k,
                          temperature=spec.temperature, top_k=spec.top_k, max_new_tokens=spec.max_new_tokens,
                          seed=seed, baseline=baseline, reward_name=name, timeout=timeout, tools=tools, env=env)
        if spec.temperature == 0:
            result["accuracy"] = result["pass@1"]
        result["centred"] = result["pass@1"]
    result.update(kind=kind, title=title)
    return result


def task_reward(rt: Runtime, task, spec: EvalTask, where: str):
    """(name, callable) of the reward that decides "correct": the spec's, else the task's own; a stage calls it
    before training, so a task without one fails then, naming `where`."""
    name = spec.reward or evaluation_of(task, spec.name)[1]
    if name is None:
        raise RlkitError(f"{where}: task '{spec.name}' names no reward of its own; give one, e.g. "
                         f"reward: <reward> (installed: {', '.join(sorted(rt.plugins.tables['reward']))})")
    fn = rt.plugins.get("reward", name, where)
    return name, functools.partial(fn, **spec.reward_args) if spec.reward_args else fn


MAX_K = 1024


def _measures_something(spec: EvalTask, kind: str, problems: int, where: str) -> None:
    """Refuse settings under which the figure would be measured on nothing, or not be the one asked for."""
    if not 1 <= spec.k <= MAX_K:  # k samples a problem are k rows of one batch: a huge k reaches the allocator
        raise RlkitError(f"{where}: k={spec.k}; valid: 1 .. {MAX_K} samples a problem")
    if problems < 1:
        raise RlkitError(f"{where}: {problems} problems to evaluate (examples); an evaluation needs at least 1 "
                         "(leave the eval out to skip it)")
    if kind == "choice" and (spec.reward is not None or spec.k > 1):
        what = "reward" if spec.reward is not None else f"k={spec.k}"
        raise RlkitError(f"{where}: {what} does not apply: the task is multiple choice, scored by its "
                         f"answer letter or likelihood (mode); leave {what.split('=')[0]} out")
    if kind != "choice" and spec.k > 1 and spec.temperature == 0:
        raise RlkitError(f"{where}: k={spec.k} with temperature 0: greedy decoding gives one completion per "
                         f"problem, so pass@{spec.k} would not be measured; set temperature > 0 (e.g. 1.0) or k: 1")


def headline(result: dict) -> dict:
    """The figures of a result for the report card's table and Aim: accuracy (and centred, multiple choice), or
    pass@1 and pass@k (the largest k) when sampled; with tools, also TOOL_FIGURES; with an env, its reward and turns."""
    tools = {k: result[k] for k in TOOL_FIGURES if k in result}  # a run with tools: how the model used them
    if "turns" in result:  # episodes: the env's mean reward and the turns they took
        tools.update(reward=result["reward"], turns=result["turns"])
    if "accuracy" in result:
        return {**{k: result[k] for k in ("accuracy", "centred") if k in result and
                   (k == "accuracy" or result.get("kind") == "choice")}, **tools}
    ks = sorted(int(k[5:]) for k in result if k.startswith("pass@"))
    return {**({f"pass@{k}": result[f"pass@{k}"] for k in sorted({ks[0], ks[-1]})} if ks else {}), **tools}
