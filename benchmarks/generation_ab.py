"""Generation A/B: this tree's generation engine against a baseline checkout's, alternating rounds in one run.

Two workloads, each timed in a fresh subprocess per side and round (PYTHONPATH set to that tree), sides
alternating (A B, then B A, ...); each side's best round and median are compared:
  rollout: the quickstart's rl stage shape until 7 December (8 prompts x 8 samples x 72 new tokens, top-k
           50, temperature 1; experiments/quickstart.yaml takes 16 x 2 since) with generate() on a random-init
           GPT of its model args (depth 4, vocab 512, seq_len 128), no stop tokens, so every row draws exactly
           72 tokens;
  serve:   the Engine at concurrency 16: 16 client threads each submit a request (one sample, 64 new tokens,
           top-k 50, temperature 1, distinct prompts and seeds) and the next one once it is done, until
           `--requests` are answered; completion tokens / wall seconds (in-process: no HTTP, unlike
           serve_throughput.py, so the engine's own cost is what differs).
The baseline may be from before the layout change: rlkit.core.sampling / rlkit.core.engine are used where
rlkit.lib.generation is missing.

    python benchmarks/generation_ab.py --baseline /work/base [--rounds 3] [--threads 1] [--cpu-clock] [--quick]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLOCK = time.perf_counter  # the wall clock; --cpu-clock: this process's CPU time (all its threads)


def modules():
    """(generate, Engine, Request, GPT, GPTConfig) from whichever layout this tree has."""
    try:
        from rlkit.lib.generation.engine import Engine, Request
        from rlkit.lib.generation.sampling import generate
    except ImportError:
        from rlkit.core.engine import Engine, Request
        from rlkit.core.sampling import generate
    try:
        from rlkit.plugins.models.gpt_model import GPT, GPTConfig
    except ImportError:  # before the network moved out of gpt.py
        from rlkit.plugins.models.gpt import GPT, GPTConfig
    return generate, Engine, Request, GPT, GPTConfig


def model_and_prompts(n, lo, hi):
    import torch

    *_, GPT, GPTConfig = modules()
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=4, vocab_size=512, seq_len=128))
    with torch.no_grad():  # a trained-looking spread of logits (a fresh lm_head gives near-uniform ones)
        model.lm_head.weight.normal_(0, 0.05)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (int(torch.randint(lo, hi + 1, (), generator=gen)),), generator=gen).tolist()
               for _ in range(n)]
    return model.eval(), prompts


def rollout(args):
    """Tokens/s of generate() at the quickstart's rl shape: best of `--repeat` calls."""
    generate = modules()[0]
    P, G, new = (4, 4, 16) if args.quick else (8, 8, 72)
    model, prompts = model_and_prompts(P, 20, 40)
    generate(model, prompts[:2], 2, 4, top_k=50)  # warm-up
    best = float("inf")
    for _ in range(args.repeat):
        start = CLOCK()
        generate(model, prompts, G, new, temperature=1.0, top_k=50, seeds=list(range(P * G)))
        best = min(best, CLOCK() - start)
    return P * G * new / best


def serve(args):
    """Completion tokens/s of the Engine with 16 client threads."""
    _, Engine, Request, _, _ = modules()
    requests, new = (16, 16) if args.quick else (args.requests, 64)
    model, prompts = model_and_prompts(requests, 20, 40)
    engine = Engine(model, [], max_rows=64)
    todo, tokens = list(range(requests)), []

    def client():
        while todo:
            try:
                i = todo.pop(0)
            except IndexError:
                return
            done = threading.Event()
            req = Request(prompts[i], 1, new, 1.0, 50, [1000 + i])
            req.notify = lambda: req.done and done.set()
            engine.submit(req)
            done.wait()
            tokens.append(len(req.tokens[0]))

    try:
        warm = engine.submit(Request(prompts[0], 1, 4, 1.0, 50, [1]))
        while not warm.done:
            time.sleep(0.01)
        threads = [threading.Thread(target=client) for _ in range(16)]
        start = CLOCK()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(tokens) / (CLOCK() - start)
    finally:
        engine.close()


def worker(args):
    import torch

    global CLOCK
    CLOCK = time.process_time if args.cpu_clock else time.perf_counter
    torch.set_num_threads(args.threads)
    print(json.dumps({"tokens_s": {"rollout": rollout, "serve": serve}[args.worker](args)}))


def measure(tree, workload, args):
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(HERE / "generation_ab.py"), "--worker", workload, "--threads", str(args.threads),
           "--repeat", str(args.repeat), "--requests", str(args.requests)] + \
        (["--quick"] if args.quick else []) + (["--cpu-clock"] if args.cpu_clock else [])
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{workload} in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="a checkout of rlkit to compare with (its repository root)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per workload, sides alternating")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each side")
    p.add_argument("--repeat", type=int, default=3, help="rollout: generate() calls per round (best kept)")
    p.add_argument("--requests", type=int, default=64, help="serve: requests per round")
    p.add_argument("--quick", action="store_true", help="a smoke run: small shapes")
    p.add_argument("--cpu-clock", action="store_true", help="time by each side's CPU time instead of the wall "
                   "clock: steadier on cores shared with other jobs (one thread a side)")
    p.add_argument("--workloads", nargs="+", default=["rollout", "serve"], choices=["rollout", "serve"])
    p.add_argument("--worker", choices=["rollout", "serve"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if not args.baseline:
        p.error("--baseline PATH: the checkout to compare with")
    trees = {"this": HERE.parent, "baseline": Path(args.baseline).resolve()}
    print(f"generation A/B: this tree {trees['this']} vs baseline {trees['baseline']}, {args.rounds} rounds, "
          f"{args.threads} thread(s) a side, {'CPU' if args.cpu_clock else 'wall'} clock, best round kept (tokens/s)")
    for workload in args.workloads:
        rates = {"this": [], "baseline": []}
        for r in range(args.rounds):
            for side in (("this", "baseline") if r % 2 == 0 else ("baseline", "this")):
                rates[side].append(measure(trees[side], workload, args))
                print(f"  {workload} round {r + 1} {side:>8}: {rates[side][-1]:8.0f}", flush=True)
        best = {side: max(r) for side, r in rates.items()}
        median = {side: statistics.median(r) for side, r in rates.items()}
        print(f"{workload}: best this {best['this']:.0f}, baseline {best['baseline']:.0f}, this / baseline "
              f"{best['this'] / best['baseline']:.3f}; medians {median['this']:.0f}, {median['baseline']:.0f}, "
              f"{median['this'] / median['baseline']:.3f}", flush=True)


if __name__ == "__main__":
    main()
