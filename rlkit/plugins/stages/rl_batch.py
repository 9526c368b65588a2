"""The rl stage's batch for one step: rollouts, rewards, advantages, and group filtering (DAPO's dynamic sampling).

Round 0 samples this rank's share of `examples_per_step` prompts x `rollout.samples` completions; every
reward plugin scores them, an algorithm's `shape(lengths, max_new_tokens)` may add reward terms (DAPO's
overlong shaping), and the (P, G) totals of all ranks are gathered. Without filtering that is the batch.
With an algorithm's `filter_groups = True`, groups whose G rewards are all equal (all advantages 0) are
dropped and further rounds sample fresh prompts until `examples_per_step` informative groups are kept
(the first ones in round, rank, prompt order) or `max_refills` extra rounds ran. Refill prompts come
after the step's own in the shuffled order, so later steps shift by the count (checkpointed).
The advantages are the algorithm's over the kept groups of all ranks, so they never depend on the
world size; the step's `reward` is round 0's mean, comparable between algorithms.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from rlkit.lib.generation.episodes import episode_metrics, episodes
from rlkit.lib.generation.sampling import generate
from rlkit.lib.generation.tools import tool_metrics, toolbox
from rlkit.lib.evaluation.scoring import score, weighted_total
from rlkit.lib.text.task import prompt_messages
from rlkit.plugins.stages.rl_plan import Rows


@dataclass
class Batch:
    ids: torch.Tensor  # (N, L) this rank's kept rows: prompt + completion, right-padded
    mask: torch.Tensor  # (N, L) 1 on sampled tokens
    entropy: torch.Tensor  # (N,) each row's next-token entropy (nats) summed over its sampled tokens
    sample_logp: torch.Tensor  # (N, L) the sampler's model log-prob (T=1, full vocabulary) of each sampled token
    adv: torch.Tensor  # (N,)
    index: torch.Tensor  # (N,) each row's index among the step's kept rows of all ranks (minibatches use it)
    prompt_tokens: int  # this rank's prompt tokens over its kept rows (for tokens/s)
    stats: dict  # reward, reward/<name>, groups kept / filtered, rounds, seconds of rollout and reward

    def training_rows(self, device) -> Rows:
        """The rows as the update reads them, on `device`; mask (N, L-1): 1 where token t+1 was sampled."""
        return Rows(ids=self.ids.clone().to(device),  # clone: generate() returns inference-mode tensors
                    mask=self.mask[:, 1:].to(device).float(), adv=self.adv.to(device), index=self.index,
                    entropy=self.entropy, sample_logp=self.sample_logp[:, 1:].to(device))


def collect(ctx, model, tokenizer, algorithm, rewards, train_task, order, step: int, refills: int) -> Batch:
    """This step's batch; `refills`: refill prompts used by earlier steps (they shift this step's prompts)."""
    s, G, world, rank = ctx.cfg, ctx.cfg.rollout.samples, ctx.dist.world_size, ctx.dist.rank
    P = s.examples_per_step // world
    filtering = bool(algorithm.filter_groups)
    rounds = 1 + (s.max_refills if filtering else 0)
    parts, kept_rewards, rows, stats = [], [], [], {"rollout_s": 0.0, "reward_s": 0.0}
    n_kept = n_dropped = used = 0
    for rnd in range(rounds):
        first = step * s.examples_per_step + refills + rnd * s.examples_per_step + rank * P
        examples = [train_task[order[(first + p) % len(order)]] for p in range(P)]
        t0 = time.perf_counter()
        seeds = [row_seed(ctx.experiment.seed, step, first + p, g) for p in range(P) for g in range(-1, G)]
        out = rollouts(ctx, model, tokenizer, examples, seeds)
        t1 = time.perf_counter()
        scores = step_scores(ctx, out, rewards, tokenizer, examples, step)
        total = weighted_total(rewards, scores, f"at {ctx.name} step {step + 1}")  # (P*G,)
        lengths = torch.tensor([len(c) for c in out.completions], dtype=torch.float32).view(P, G)
        for name, term in algorithm.shape(lengths, s.rollout.max_new_tokens).items():  # DAPO's overlong shaping
            scores[name] = term.reshape(-1)
            total = total + scores[name]
        stats["rollout_s"] += t1 - t0
        stats["reward_s"] += time.perf_counter() - t1
        if rnd == 0:
            stats.update({"reward": total.mean(), **{f"reward/{n}": v.float().mean() for n, v in scores.items()}})
            if out.tool_calls is not None:
                stats.update(tool_metrics(out.tool_calls, out.tool_errors, out.tool_forced))
            if out.episodes is not None:
                stats.update(episode_metrics(out.episodes, [len(c) for c in out.completions], s.rollout.max_turns))
        all_rewards = gather(total.view(P, G).to(ctx.device), world)  # (P*world, G)
        informative = (all_rewards != all_rewards[:, :1]).any(dim=1) if filtering else \
            torch.ones(P * world, dtype=torch.bool, device=ctx.device)
        take = informative & (informative.cumsum(0) <= s.examples_per_step - n_kept)  # the first ones needed
        mine = take[rank * P:(rank + 1) * P]  # (P,) this rank's kept groups
        groups = n_kept + (take.cumsum(0) - 1)[rank * P:(rank + 1) * P][mine]  # their index among all kept
        rows.append((groups[:, None] * G + torch.arange(G, device=groups.device)).reshape(-1).cpu())
        n_kept, n_dropped, used = n_kept + int(take.sum()), n_dropped + int((~informative).sum()), rnd
        parts.append((out, mine))
        kept_rewards.append((all_rewards[take], take.view(world, P).sum(dim=1)))
        if n_kept >= s.examples_per_step:
            break
    adv = advantages(algorithm, kept_rewards, rank, world)
    ids, mask, entropy, sample_logp, prompt_tokens = merge(parts, G)
    stats.update(groups_kept=n_kept, groups_filtered=n_dropped, refill_rounds=used)
    refill_prompts = used * s.examples_per_step
    return Batch(ids, mask, entropy, sample_logp, adv, torch.cat(rows), prompt_tokens,
                 {**stats, "refill_prompts": refill_prompts})


def advantages(algorithm, kept_rewards, rank: int, world: int) -> torch.Tensor:
    """The algorithm's advantages over every kept group (all rounds, all ranks); this rank's rows (N,)."""
    rewards = torch.cat([r for r, _ in kept_rewards])  # (K, G) in round, rank, prompt order
    adv = algorithm.advantages(rewards) if len(rewards) else rewards
    mine, start = [], 0
    for _, per_rank in kept_rewards:
        offsets = [0, *per_rank.cumsum(0).tolist()]
        mine.append(adv[start + offsets[rank]:start + offsets[rank + 1]])
        start += offsets[-1]
    return torch.cat(mine).reshape(-1)


def merge(parts, G: int):
    """(ids (N, L), mask (N, L), entropy (N,), sample_logp (N, L), prompt tokens) of this rank's kept rows over
    the rounds."""
    ids, masks, entropies, logps, prompt_tokens = [], [], [], [], 0
    for out, mine in parts:
        rows = mine.repeat_interleave(G).cpu()  # (P*G,)
        ids.append(out.ids[rows])
        masks.append(out.mask[rows])
        entropies.append(out.entropy[rows.to(out.entropy.device)])
        logps.append(out.model_logprobs[rows.to(out.model_logprobs.device)])
        prompt_tokens += sum(n for n, keep in zip(out.prompt_lens, rows.tolist()) if keep)
    width = max(t.shape[1] for t in ids)

    def padded(ts):  # right padding with 0
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ts])
    return padded(ids), padded(masks), torch.cat(entropies), padded(logps), prompt_tokens


def step_scores(ctx, out, rewards, tokenizer, examples, step: int) -> dict[str, torch.Tensor]:
    """{name: (P*G,)}: each reward plugin's scores of the decoded completions, or with env the episodes' rewards
    ("env": the sum of each episode's turn rewards)."""
    if out.episodes is not None:
        return {"env": torch.tensor([row.reward for row in out.episodes], dtype=torch.float32)}
    s, G = ctx.cfg, ctx.cfg.rollout.samples
    texts = [tokenizer.decode([t for t in c if t not in tokenizer.stop_ids]) for c in out.completions]
    return score(rewards, texts, [ex for ex in examples for _ in range(G)], f"at {ctx.name} step {step + 1}",
                 s.reward_timeout, f"stages.{ctx.name}.reward_timeout")


def rollouts(ctx, model, tokenizer, examples, seeds):
    """`rollout.samples` completions of each example's prompt, with the rollout settings; `seeds`: G + 1 a
    prompt, the first resets its envs (with env: each row an episode), the others seed its rows' draws."""
    r, G = ctx.cfg.rollout, ctx.cfg.rollout.samples
    env = episodes(ctx.plugins, ctx.cfg.env, r.max_turns, f"stages.{ctx.name}.env")
    resets, seeds = seeds[::G + 1], [x for i, x in enumerate(seeds) if i % (G + 1)]
    prompts, rows = env.start(examples, G, resets, tokenizer) if env else \
        ([tokenizer.render_for_completion(prompt_messages(ex)) for ex in examples], None)
    tools = toolbox(ctx.plugins, ctx.cfg.tools, tokenizer, f"stages.{ctx.name}.tools")
    model.eval()
    with ctx.autocast():
        out = generate(model, prompts, samples=r.samples, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                       top_k=r.top_k or None, stop_tokens=tokenizer.stop_ids, seeds=seeds, entropy=True,
                       logprobs=True, tools=tools, envs=rows)  # the sampler's log-probs: mismatch/* metrics, truncated IS
    model.train()
    return out


def row_seed(seed: int, step: int, prompt: int, sample: int) -> int:
    """One sampling seed per (step, prompt, sample): the same rollout whatever the batch or world size."""
    return ((seed * 1_000_003 + step) * 1_000_033 + prompt) * 1_009 + sample


def gather(t: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate a (P, G) tensor from every rank, in rank order."""
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    torch_dist.all_gather(parts, t)
    return torch.cat(parts)
