"""Training-step A/B: this tree's training step against a baseline checkout's, alternating rounds in one run.

The step is the quickstart's pretrain step (experiments/quickstart.yaml): rlkit's GPT at depth 4 (vocab 512,
seq_len 128), 2 accumulation passes of 16 x 128 tokens, forward + backward under the run's autocast dtype,
then the `muon` optimizer plugin's step (Muon for matrices, AdamW for the rest), built from each tree's own
plugin functions. Each side runs in a fresh subprocess per round (PYTHONPATH set to its tree), sides
alternating (A B, then B A, ...); the median step time of each round, then each side's best and median
round, are compared.

    python benchmarks/train_step_ab.py --baseline /work/base [--rounds 3] [--steps 30] [--dtype bfloat16]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, statistics, sys, time
import torch
steps, dtype = int(sys.argv[1]), getattr(torch, sys.argv[2])
try:
    from rlkit.plugins.models.gpt_model import GPT, GPTConfig
except ImportError:  # a tree from before the network moved to gpt_model.py
    from rlkit.plugins.models.gpt import GPT, GPTConfig
from rlkit.plugins.optimizers.muon import muon
torch.manual_seed(0)
model = GPT(GPTConfig(depth=4, vocab_size=512, seq_len=128))
model.init_weights()
opt = muon(model)
x = torch.randint(0, 512, (2, 16, 129))
times = []
for step in range(steps + 3):
    start = time.perf_counter()
    for p in range(2):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x[p, :, :-1], x[p, :, 1:]) / 2
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print(json.dumps({"step_s": statistics.median(times[3:])}))
'''


def one_round(tree: Path, steps: int, dtype: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps), dtype], env=env, capture_output=True, text=True,
                         check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])["step_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the tree to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps a round (after 3 warm-up steps)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    sides = {"this tree": here, "baseline": args.baseline.resolve()}
    rounds = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            rounds[name].append(one_round(sides[name], args.steps, args.dtype))
            print(f"round {r + 1} {name}: {rounds[name][-1] * 1000:.1f} ms/step", flush=True)
    best = {name: min(v) for name, v in rounds.items()}
    med = {name: statistics.median(v) for name, v in rounds.items()}
    print(f"\nquickstart pretrain step ({args.dtype}, {torch_threads()} threads): "
          f"this tree {best['this tree'] * 1000:.1f} ms best / {med['this tree'] * 1000:.1f} median, baseline "
          f"{best['baseline'] * 1000:.1f} / {med['baseline'] * 1000:.1f}; ratio (baseline / this, best) "
          f"{best['baseline'] / best['this tree']:.3f}, (median) {med['baseline'] / med['this tree']:.3f}")


def torch_threads() -> str:
    return os.environ.get("OMP_NUM_THREADS", "default")


if __name__ == "__main__":
    main()
