"""Checkpoints compared on problems no run trains or evaluates on, with paired standard errors.

    python benchmarks/heldout.py runs/quickstart/sft runs/quickstart/rl [more ...] [--examples 600] [--k 8]

The arithmetic task's test partition drawn with another seed (`--task-seed`, 7: the runs evaluate seed 0's
first problems; training never sees the test partition), operands 2 to 3 as in the quickstarts. Each
checkpoint gets, on the same problems:
- greedy accuracy (temperature 0, one completion);
- pass@1 at T=1 from `--k` samples a problem (top-k 50), with the same random numbers for every checkpoint
  (rlkit.lib.evaluation.evaluate: sample r of problem i is seeded by (seed, i, r)).
A checkpoint whose tokenizer has the tool-call tokens samples with the calculator (as it was trained).
Then every checkpoint after the first against the one before it (or `--against first`): the paired change
d_i = x_i(B) - x_i(A) over problems, mean(d) +- std(d) / sqrt(n).
Prints a markdown table. Runs in the checkpoints' compute dtype (auto: bf16 on a CPU with AVX512-BF16).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from rlkit.core import dist, policy
from rlkit.core.handoff import Checkpoint
from rlkit.core.plugins import load_plugins
from rlkit.core.runtime import Runtime
from rlkit.core.track import Tracker
from rlkit.lib.evaluation.evaluate import evaluate
from rlkit.lib.generation.tools import toolbox


def per_problem(path: str, args, plugins) -> dict:
    """{'greedy': [0/1 a problem], 'pass1': [fraction of k samples correct], 'tools': bool, 'seconds': s}."""
    t0 = time.time()
    device = torch.device("cpu")
    dtype = dist.compute_dtype("auto", device)
    model, tokenizer = policy.load(plugins, Checkpoint.open(path), 160, path, device)
    uses_tools = getattr(tokenizer, "tool_tokens", None) is not None
    task = plugins.tables["task"]["arithmetic"]("test", operands=[2, 3], seed=args.task_seed, size=args.examples)
    reward = plugins.tables["reward"]["gsm8k"]
    rt = Runtime("heldout", device, dtype, dist.DistInfo(), Tracker(), plugins, 0)
    tools = toolbox(plugins, [{"name": "calculator", "args": {}}], tokenizer, "heldout") if uses_tools else None
    common = dict(examples=args.examples, top_k=50, max_new_tokens=args.max_new_tokens, tools=tools)
    greedy = evaluate(rt, model, tokenizer, task, reward, samples=1, temperature=0.0, **common)
    sampled = evaluate(rt, model, tokenizer, task, reward, samples=args.k, temperature=1.0, seed=1, **common)
    return {"greedy": greedy["per_problem"], "pass1": sampled["per_problem"], "tools": uses_tools,
            "seconds": time.time() - t0}


def mean_se(values) -> tuple[float, float]:
    x = torch.as_tensor(values, dtype=torch.float64)
    return float(x.mean()), float(x.std() / math.sqrt(len(x)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--examples", type=int, default=600)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--task-seed", type=int, default=7)
    ap.add_argument("--max-new-tokens", type=int, default=104)
    ap.add_argument("--against", choices=["previous", "first"], default="previous")
    args = ap.parse_args()
    plugins = load_plugins()
    results = [per_problem(path, args, plugins) for path in args.checkpoints]
    print(f"{args.examples} held-out problems (arithmetic test, seed {args.task_seed}); pass@1 from {args.k} "
          f"samples at T=1; +- is one standard error (paired for changes)\n")
    print("| checkpoint | tools | greedy accuracy | pass@1 (T=1) | change in greedy | change in pass@1 | s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for i, (path, r) in enumerate(zip(args.checkpoints, results)):
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in (mean_se(r["greedy"]), mean_se(r["pass1"]))]
        if i == 0:
            changes = ["", ""]
        else:
            base = results[0 if args.against == "first" else i - 1]
            changes = ["{:+.3f} ± {:.3f}".format(*mean_se(torch.as_tensor(r[key]) - torch.as_tensor(base[key])))
                       for key in ("greedy", "pass1")]
        print(f"| {path} | {'calculator' if r['tools'] else '-'} | {' | '.join(cells)} | {' | '.join(changes)} "
              f"| {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
