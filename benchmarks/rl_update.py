"""The rl stage's update: micro-batches cut in order of row length against row order.

One rl step's update() (forward + backward over the micro-batches, then Muon + AdamW) on rollouts of
mixed lengths: `--rows` rows, prompts of 60-99 tokens, completions of 20-399 (uniform), the GRPO loss
with random non-zero advantages, `--device-batch-size` rows a micro-batch, rlkit's GPT (d4, vocab 512)
under bf16 autocast. Two ways, alternating rounds, best round kept:
- "length order", as shipped: each micro-batch holds rows of like length (rl_plan.py);
- "row order", as before: every row's length reads the same to the sort, which then keeps the rows' order.
Positions: what the forwards cover (rows x the micro-batch's longest row), against the tokens the rows hold.

    python benchmarks/rl_update.py [--quick] [--rows 128] [--device-batch-size 16] [--rounds 3]
"""
import argparse
import tempfile
from pathlib import Path

import torch

from rlkit.core import pipeline
from rlkit.core.context import StageContext
from rlkit.core.dist import DistInfo
from rlkit.core.track import Tracker
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.plugins.optimizers.muon import muon
from rlkit.plugins.stages import rl_plan, rl_update
from timing import now, table

EXPERIMENT = """\
name: bench
model: {{name: gpt, seq_len: 512, dtype: bfloat16}}
tracking: {{enabled: false}}
stages:
  rl:
    task: {{name: arithmetic}}
    rewards: [{{name: gsm8k}}]
    algorithm: {{name: grpo}}
    rollout: {{max_new_tokens: 400}}
    device_batch_size: {size}
"""


def stage_context(folder: Path, size: int) -> StageContext:
    """A real StageContext of the rl entry above (bf16 autocast on CPU)."""
    path = folder / "bench.yaml"
    path.write_text(EXPERIMENT.format(size=size))
    cfg, plugins = pipeline.prepare(str(path), [], [])
    entry = next(e for e in pipeline.entries(cfg, plugins) if e.name == "rl")
    return StageContext("rl", entry.cfg, cfg, 0, plugins, folder / "runs", torch.device("cpu"), torch.bfloat16,
                        DistInfo(), Tracker())


def rollouts(rows: int, longest: int, seed: int = 0):
    """ids (N, L), mask (N, L-1), adv (N,): random tokens, prompts 60-99, completions 20..longest-1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 512, (rows, 100 + longest), generator=g)
    mask = torch.zeros(rows, 99 + longest)
    for r in range(rows):
        prompt, completion = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((60, 100), (20, longest)))
        mask[r, prompt - 1:prompt - 1 + completion] = 1
    adv = torch.randn(rows, generator=g)
    return ids, mask, adv


def one_update(ctx, model, optimizer, algorithm, ids, mask, adv) -> tuple[float, int]:
    """(seconds, positions the forwards covered) of one update()."""
    covered = []
    hook = model.register_forward_hook(lambda m, inputs, out: covered.append(inputs[0].numel()))
    t0 = now()
    rl_update.update(rl_update.Learner(ctx, model, model, optimizer, algorithm), rl_plan.Rows(ids, mask, adv))
    seconds = now() - t0
    hook.remove()
    return seconds, sum(covered)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 rows, completions < 60, 1 round")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--device-batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows, longest, rounds = (16, 60, 1) if args.quick else (args.rows, 400, args.rounds)
    ids, mask, adv = rollouts(rows, longest)
    needed = int(rl_plan.row_lengths(mask).sum()) - rows  # a row of n tokens is n-1 forward positions
    as_shipped = rl_plan.row_lengths
    ways = {"length order": as_shipped, "row order": lambda m: torch.zeros(m.shape[0], dtype=torch.long)}
    best = {name: (float("inf"), 0) for name in ways}
    with tempfile.TemporaryDirectory() as folder:
        ctx = stage_context(Path(folder), args.device_batch_size)
        algorithm = ctx.plugins.tables["algorithm"]["grpo"]()
        torch.manual_seed(0)
        model = GPT(GPTConfig(depth=4, vocab_size=512, seq_len=512))
        model.init_weights()
        optimizer = muon(model)
        one_update(ctx, model, optimizer, algorithm, ids, mask, adv)  # warm-up
        for _ in range(rounds):
            for name, lengths in ways.items():
                rl_plan.row_lengths = lengths
                try:
                    seconds, covered = one_update(ctx, model, optimizer, algorithm, ids, mask, adv)
                finally:
                    rl_plan.row_lengths = as_shipped
                best[name] = min(best[name], (seconds, covered))
    base = best["row order"][0]
    print(f"rl update: {rows} rows, {args.device_batch_size} a micro-batch, {needed:,} positions needed, "
          f"d4 bf16, {torch.get_num_threads()} threads, best of {rounds}")
    table(["order", "positions", "padding", "s / update", "tokens/s", "speed-up"],
          [[name, f"{covered:,}", f"{1 - needed / covered:.0%}", f"{s:.2f}", f"{needed / s:,.0f}", f"{base / s:.2f}x"]
           for name, (s, covered) in best.items()])


if __name__ == "__main__":
    main()
