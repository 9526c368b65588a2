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
passes ctx.runtime; a command builds one). What it is asked (`EvalTask`) and the figures it reports
(`headline`) are rlkit.lib.evaluation.evaltask, which needs no torch.
"""
from __future__ import annotations

import math

import torch

from rlkit.core.runtime import Runtime
from rlkit.lib.evaluation.evaltask import EvalTask, measures_something, task_reward
from rlkit.lib.generation.sampling import generate
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
             top_k: int, max_new_tokens: int, rows_per_batch: int = 256, seed: int = 0,
             baseline: list[float] | None = None, reward_name: str = "reward", timeout: float = 10.0,
             tools=None, env=None) -> dict:
    """{'pass@1': ..., 'pass@k': ..., 'reward': mean, 'length': mean completion tokens, 'samples': [...],
    'per_problem': pass@1 of every problem, all ranks'} and, with `baseline`, 'delta@1' and 'delta_se'; with
    `tools` (a Toolbox: rows may call them) also tool_metrics' figures, and 'length' counts sampled tokens only;
    with `env` (rlkit.lib.generation.episodes.Episodes: each completion is an episode, its reward the env's, no
    `reward`) also 'turns', the mean turns an episode. A batch holds `rows_per_batch` completions (n of each
    problem's): small decode batches are mostly per-op overhead, so a greedy eval batches 8x the problems
    a sampled one (n = 8) does."""
    model.eval()
    n = 1 if temperature == 0 else samples
    prompts_per_batch = max(1, rows_per_batch // n)
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


def tool_figures(rt: Runtime, calls: list[int], errors: list[int], forced: list[int]) -> dict:
    """tool_metrics over every rank's completions (their counts summed over ranks)."""
    totals = torch.tensor([sum(calls), sum(errors), sum(forced), len(calls), sum(c > 0 for c in calls)],
                          dtype=torch.float64, device=rt.device)
    c, e, f, n, used = rt.sum_over_ranks(totals).cpu().tolist()
    n = max(n, 1)
    return {"tool_calls": c / n, "tool_use": used / n, "tool_error_rate": e / c if c else 0.0, "tool_forced": f / n}


def run_task(rt: Runtime, model, tokenizer, task, spec: EvalTask, *, examples: int, seed: int,
             baseline: list[float] | None = None, timeout: float = 10.0) -> dict:
    """Evaluate one task as it declares (rlkit.lib.text.task.evaluation_of). Generative: evaluate()'s result plus
    'accuracy' (greedy) or pass@1..k (sampled); multiple choice: accuracy, centred, chance. Both carry
    'centred' (a generative task's chance is 0, so its pass@1), which ChatCORE averages."""
    from rlkit.lib.evaluation.choice import evaluate_choice

    kind, _, title = evaluation_of(task, spec.name)
    measures_something(spec, kind, min(examples, len(task)), f"stages.{rt.name}: task '{spec.name}'")
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


