"""CORE (DCLM, Li et al. 2024): a base model's score over the 22 in-context tasks of the DCLM eval bundle,
as nanochat computes it (nanochat/core_eval.py and scripts/base_eval.py).

The bundle is a folder with core.yaml (`icl_tasks`: label, dataset_uri, num_fewshot, icl_task_type,
continuation_delimiter), eval_meta_data.csv ("Eval Task", "Random baseline" in percent) and
eval_data/<dataset_uri> (JSONL). Each task's rows are shuffled with seed 1337 (then the first
`max_per_task`, if given); example i gets `num_fewshot` others drawn with seed 1234 + i, each shown
as "<query><delimiter><answer>\n\n" before it. By task type:
  - multiple_choice {query, choices, gold}: one sequence per choice, "<query><d><choice>"; the choice
    tokens are those after the sequences' common prefix; the pick is the lowest mean loss on them;
  - schema {context_options, continuation, gold}: one sequence per context, "<context><d><continuation>";
    the scored tokens are the common suffix; the pick is the lowest mean loss;
  - language_modeling {context, continuation}: correct when greedy decoding (the argmax at every
    position) reproduces every continuation token.
Every sequence starts with <|bos|> and is cut to the model's last `max_len` tokens when longer.
centred = (accuracy - baseline / 100) / (1 - baseline / 100); CORE = the mean centred over the tasks.
Ranks take every world_size-th example; correct counts are all-reduced.
The bundle itself is found or downloaded by rlkit.lib.evaluation.evalbundle.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from rlkit.core.errors import RlkitError

TYPES = ("multiple_choice", "schema", "language_modeling")


@torch.no_grad()
def evaluate_core(ctx, model, tokenizer, folder: Path, max_per_task: int = -1) -> dict:
    """{'tasks': {label: {'accuracy', 'centred'}}, 'core': mean centred} over the bundle's tasks."""
    import yaml

    tasks = yaml.safe_load((folder / "core.yaml").read_text())["icl_tasks"]
    with open(folder / "eval_meta_data.csv", newline="", encoding="utf-8") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    max_len = getattr(model, "max_seq_len", None)  # a model with a hard limit says so (as in nanochat)
    was_training = model.training
    model.eval()
    out = {}
    for task in tasks:
        label, kind = task["label"], task["icl_task_type"]
        if kind not in TYPES:
            raise RlkitError(f"core: task {label}: icl_task_type {kind!r} is not one of {', '.join(TYPES)}")
        rows = [json.loads(line) for line in (folder / "eval_data" / task["dataset_uri"]).read_text().splitlines()
                if line.strip()]
        random.Random(1337).shuffle(rows)
        rows = rows[:max_per_task] if max_per_task > 0 else rows
        shots = task["num_fewshot"][0] if isinstance(task["num_fewshot"], list) else task["num_fewshot"]
        delim = task.get("continuation_delimiter", " ")
        correct = torch.zeros(len(rows), dtype=torch.float64)
        for i in range(ctx.dist.rank, len(rows), ctx.dist.world_size):
            with ctx.autocast():
                correct[i] = float(_example(model, tokenizer, rows, i, kind, shots, delim, max_len))
        correct = ctx.sum_over_ranks(correct.to(ctx.device)).cpu()
        accuracy = correct.mean().item() if len(rows) else 0.0
        chance = 0.01 * baselines[label]
        out[label] = {"accuracy": accuracy, "centred": (accuracy - chance) / (1.0 - chance)}
    model.train(was_training)
    return {"tasks": out, "core": sum(t["centred"] for t in out.values()) / max(len(out), 1)}


def _example(model, tokenizer, rows, i, kind, shots, delim, max_len) -> bool:
    item = rows[i]
    others = [j for j in range(len(rows)) if j != i]
    few = [rows[j] for j in random.Random(1234 + i).sample(others, min(shots, len(others)))] if shots else []
    bos = [tokenizer.bos_id]
    if kind == "multiple_choice":
        prefix = "".join(f"{ex['query']}{delim}{ex['choices'][ex['gold']]}\n\n" for ex in few)
        seqs = [bos + tokenizer.encode(f"{prefix}{item['query']}{delim}{c}") for c in item["choices"]]
        start = _common(seqs)
        spans = [(start, len(s)) for s in seqs]
    elif kind == "schema":
        prefix = "".join(f"{ex['context_options'][ex['gold']]}{delim}{ex['continuation']}\n\n" for ex in few)
        seqs = [bos + tokenizer.encode(f"{prefix}{c}{delim}{item['continuation']}") for c in item["context_options"]]
        tail = _common([s[::-1] for s in seqs])
        spans = [(len(s) - tail, len(s)) for s in seqs]
    else:
        prefix = "".join(f"{ex['context'].strip()}{delim}{ex['continuation']}\n\n" for ex in few)
        without = bos + tokenizer.encode(f"{prefix}{item['context'].strip()}{delim}".strip())
        full = bos + tokenizer.encode(f"{prefix}{item['context'].strip()}{delim}{item['continuation']}")
        if full[:len(without)] != without or len(full) <= len(without):
            raise RlkitError("core: a language_modeling context does not tokenize as a prefix of context + "
                             "continuation with this tokenizer")
        seqs, spans = [full], [(len(without), len(full))]
    if max_len is not None:  # keep the end: the scored tokens are there
        cut = [max(0, len(s) - max_len) for s in seqs]
        seqs = [s[c:] for s, c in zip(seqs, cut)]
        spans = [(a - c, b - c) for (a, b), c in zip(spans, cut)]
    device = next(model.parameters()).device
    idx = torch.full((len(seqs), max(map(len, seqs))), tokenizer.bos_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        idx[r, :len(s)] = torch.tensor(s)
    logits = model(idx.to(device)).float()  # (R, T, V)
    if kind == "language_modeling":
        a, b = spans[0]
        return bool((logits[0, a - 1:b - 1].argmax(-1).cpu() == idx[0, a:b]).all())
    losses = []
    for r, (a, b) in enumerate(spans):
        losses.append(F.cross_entropy(logits[r, a - 1:b - 1], idx[r, a:b].to(device)).item())  # mean over tokens
    return losses.index(min(losses)) == item["gold"]


def _common(seqs: list[list[int]]) -> int:
    """Length of the prefix all sequences share."""
    n = min(map(len, seqs))
    for k in range(n):
        if any(s[k] != seqs[0][k] for s in seqs):
            return k
    return n
