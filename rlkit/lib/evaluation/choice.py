"""Multiple-choice evaluation: which choice the model prefers, accuracy and centred accuracy.

Two ways to ask (nanochat's two):
  - "letter" (chat models; nanochat's chat_eval): render the question and its lettered choices as a
    chat prompt ending in <|assistant_start|>, take the logits of the next token, keep only the
    valid letters' tokens (A, B, ... for that example's choices) and pick the largest;
  - "likelihood" (base models; nanochat's CORE multiple choice): for each choice, the mean
    log-probability of its tokens after the example's plain-text `query` ("Question: ...\nAnswer:"),
    and pick the largest (the mean, not the sum, so long choices are not penalised for length).
Then accuracy = mean(correct), chance = mean(1 / number of choices) and
    centred = (accuracy - chance) / (1 - chance)
(0 at chance, 1 when always right), as nanochat centres its chat and CORE metrics. Each rank
scores its own slice of the problems; sums are all-reduced.
"""
from __future__ import annotations

import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.evaltask import MODES
from rlkit.lib.text.task import LETTERS, prompt_messages


@torch.no_grad()
def evaluate_choice(ctx, model, tokenizer, task, *, examples: int, mode: str = "letter",
                    batch_size: int = 16) -> dict:
    """{'accuracy', 'centred', 'chance', 'count', 'per_problem': 1.0/0.0 of every problem, all ranks'}."""
    if mode not in MODES:
        raise RlkitError(f"multiple-choice mode must be one of {', '.join(MODES)}, got {mode!r}")
    n_total = min(examples, len(task))
    indices = list(range(n_total))[ctx.dist.rank::ctx.dist.world_size]
    pick = _by_letter if mode == "letter" else _by_likelihood
    sums = torch.zeros(3, dtype=torch.float64)  # correct, sum of 1 / choices, count
    per_problem = torch.zeros(n_total, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        exs = [task[i] for i in batch]
        for ex in exs:
            _check_example(ex)
        with ctx.autocast():
            picked = pick(model, tokenizer, exs)
        for i, ex, choice in zip(batch, exs, picked):
            right = float(choice == ex["gold"])
            per_problem[i] = right
            sums += torch.tensor([right, 1.0 / len(ex["choices"]), 1.0], dtype=torch.float64)
    model.train(was_training)
    sums = ctx.sum_over_ranks(sums.to(ctx.device)).cpu()
    count = max(sums[2].item(), 1.0)
    accuracy, chance = sums[0].item() / count, sums[1].item() / count
    return {"accuracy": accuracy, "centred": centred(accuracy, chance), "chance": chance, "count": int(sums[2]),
            "per_problem": ctx.sum_over_ranks(per_problem.to(ctx.device)).cpu().tolist()}  # ranks' are disjoint


def centred(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance, 1 at perfect."""
    return (accuracy - chance) / (1.0 - chance) if chance < 1 else 0.0


def _by_letter(model, tokenizer, exs) -> list[int]:
    """The valid letter with the largest next-token logit after each chat prompt."""
    prompts = [tokenizer.render_for_completion(prompt_messages(ex)) for ex in exs]
    logits = _logits(model, prompts)  # (B, T, V)
    out = []
    for b, (prompt, ex) in enumerate(zip(prompts, exs)):
        ids = letter_ids(tokenizer, len(ex["choices"]))
        out.append(int(logits[b, len(prompt) - 1, ids].argmax()))
    return out


def _by_likelihood(model, tokenizer, exs) -> list[int]:
    """The choice whose tokens have the largest mean log-probability after the example's query."""
    rows, spans = [], []  # one row per (example, choice); span: where the choice's tokens sit
    bos = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", None) is not None else []
    for ex in exs:
        context = bos + tokenizer.encode(ex.get("query") or prompt_messages(ex)[-1]["content"])
        for choice in ex["choices"]:
            cont = tokenizer.encode(" " + choice) or tokenizer.encode(choice)
            rows.append(context + cont)
            spans.append((len(context), len(context) + len(cont)))
    logp = torch.log_softmax(_logits(model, rows).float(), dim=-1)  # (R, T, V)
    means = []
    for r, (row, (a, b)) in enumerate(zip(rows, spans)):
        targets = torch.tensor(row[a:b], device=logp.device)
        means.append(logp[r, a - 1:b - 1].gather(1, targets[:, None]).mean().item())
    out, at = [], 0
    for ex in exs:
        n = len(ex["choices"])
        scores = means[at:at + n]
        out.append(max(range(n), key=lambda j: scores[j]))  # the first of equal scores
        at += n
    return out


def letter_ids(tokenizer, n: int) -> list[int]:
    """Token ids of the first n letters, each its own single token (as the reply renders it)."""
    ids = []
    for letter in LETTERS[:n]:
        tokens = tokenizer.encode(letter)
        if len(tokens) != 1:
            raise RlkitError(f"multiple choice: the tokenizer splits the letter {letter!r} into {len(tokens)} tokens; "
                             "letter scoring needs one token a letter (use mode: likelihood)")
        ids.append(tokens[0])
    return ids


def _logits(model, rows: list[list[int]]) -> torch.Tensor:
    """Logits (B, T, V) of right-padded rows (padding comes after every row's end, so causal attention
    never sees it from the positions that are read)."""
    device = next(model.parameters()).device
    idx = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for b, row in enumerate(rows):
        idx[b, :len(row)] = torch.tensor(row)
    return model(idx.to(device))


def _check_example(ex) -> None:
    choices, gold = ex.get("choices"), ex.get("gold")
    if not (isinstance(choices, list) and len(choices) >= 2 and isinstance(gold, int) and 0 <= gold < len(choices)):
        raise RlkitError(f"multiple-choice example {str(ex)[:80]!r}: needs \"choices\": a list of at least 2 "
                         "strings and \"gold\": the index of the right one (see make_choice_example)")
