"""The table of docs/algorithms.md from finished runs of experiments/algorithms.yaml.

    python benchmarks/algorithms_table.py RUNS_DIR START_CHECKPOINT [--prefix alg] [--greedy 200]

Reads runs named <prefix>-<algorithm>-s<seed> or, as `--sweep` names them, <prefix>-<algorithm>-seed<seed>
under RUNS_DIR: each rl entry's summary (pass@1 change with its
paired standard error, pass@8 before -> after, seconds per step = rollout + reward + train) and, by greedy
decoding (temperature 0) on the first `--greedy` held-out problems, the accuracy of START_CHECKPOINT and of
each run's final weights. Prints one markdown row per algorithm: over seeds, the mean change and the
standard error of that mean (sqrt(sum se^2) / seeds), and each seed's change.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import torch

from rlkit.core import checkpoint as ckpt
from rlkit.core import policy
from rlkit.core.dist import DistInfo, compute_dtype
from rlkit.lib.evaluation.evaluate import evaluate
from rlkit.core.handoff import Checkpoint
from rlkit.core.plugins import load_plugins
from rlkit.lib.text.tokenizer import Tokenizer


def greedy(path, plugins, task, reward, n: int) -> float:
    """Greedy accuracy of a checkpoint on the first n held-out problems, in the runs' compute dtype."""
    handle = Checkpoint.open(path)
    tokenizer = Tokenizer.load(handle.tokenizer)
    model, _ = policy.build(plugins, handle.model["name"], handle.model["args"], tokenizer, 128, "model")
    model.load_state_dict(ckpt.load_checkpoint(handle.path, load_optimizer=False)[0])
    device = torch.device("cpu")
    dtype = compute_dtype("auto", device)
    ctx = SimpleNamespace(dist=DistInfo(), name="greedy", device=device, sum_over_ranks=lambda t: t,
                          autocast=lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32))
    result = evaluate(ctx, model, tokenizer, task, reward, examples=n, samples=1, temperature=0.0, top_k=0,
                      max_new_tokens=72)
    return result["pass@1"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("start")
    ap.add_argument("--prefix", default="alg")
    ap.add_argument("--greedy", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    plugins = load_plugins()
    task = plugins.tables["task"]["arithmetic"]("test", operands=[2, 3])
    reward = plugins.tables["reward"]["gsm8k"]
    start_greedy = greedy(a.start, plugins, task, reward, a.greedy)
    rows = {}
    for run in sorted(a.runs.glob(f"{a.prefix}-*-s*")):
        m = re.fullmatch(rf"{a.prefix}-(.+)-s(?:eed)?(\d+)", run.name)
        summary_file = run / "summary.json"
        if not m or not summary_file.is_file():
            continue
        rl = json.loads(summary_file.read_text())["stages"]["rl"]
        before, after, tracked = rl["eval_before"], rl["eval_after"], rl["tracked"]
        step_s = sum(tracked[k]["mean"] for k in ("rollout_s", "reward_s", "train_s"))
        rows.setdefault(m.group(1), []).append(dict(
            seed=int(m.group(2)), delta=after["delta@1"], se=after["delta_se"], p1=(before["pass@1"], after["pass@1"]),
            p8=(before["pass@8"], after["pass@8"]), greedy=greedy(run / "rl", plugins, task, reward, a.greedy),
            step_s=step_s, kl_ref=tracked.get("kl_ref", {}).get("mean"), entropy=tracked["entropy"]["last"]))
    print(f"greedy accuracy of the start: {start_greedy:.3f} on {a.greedy} problems\n")
    print("| algorithm | seeds | pass@1 change (T=1) ± se | per seed | pass@1 before → after | greedy before → after "
          "| pass@8 before → after | s/step | entropy at the end |")
    print("|---|---|---|---|---|---|---|---|---|")
    order = sorted(rows, key=lambda k: -sum(r["delta"] for r in rows[k]) / len(rows[k]))
    for name in order:
        rs = sorted(rows[name], key=lambda r: r["seed"])
        k = len(rs)
        mean = lambda f: sum(f(r) for r in rs) / k  # noqa: E731
        se = math.sqrt(sum(r["se"] ** 2 for r in rs)) / k
        per_seed = ", ".join(f"{r['delta']:+.3f}" for r in rs)
        print(f"| `{name}` | {k} | {mean(lambda r: r['delta']):+.3f} ± {se:.3f} | {per_seed} | "
              f"{mean(lambda r: r['p1'][0]):.3f} → {mean(lambda r: r['p1'][1]):.3f} | "
              f"{start_greedy:.3f} → {mean(lambda r: r['greedy']):.3f} | "
              f"{mean(lambda r: r['p8'][0]):.3f} → {mean(lambda r: r['p8'][1]):.3f} | "
              f"{mean(lambda r: r['step_s']):.2f} | {mean(lambda r: r['entropy']):.3f} |")


if __name__ == "__main__":
    main()
