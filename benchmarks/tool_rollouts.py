"""Rollouts with the calculator in the loop against the same rollouts without it, in one process.

Shape: 16 prompts x 8 samples x 96 new tokens, a depth-4 GPT (vocab 512, random weights spread out so the
draws vary), temperature 1, top-k 50, fp32, the same seeds both ways. A random model never learns the call
format, so the call tokens are the two tokens it samples most: calls are then frequent (see calls/row), and
the figure is the engine's cost per call (the thread pool's round trip, the forced tokens, a wait of at most
one decode step), an upper bound for a trained model that calls a few times a reply. Forced tokens are
decoded like sampled ones, so tokens/s counts every token of the completions; the ratio is the two times.

    python benchmarks/tool_rollouts.py [--reps 3] [--quick]
    python benchmarks/tool_rollouts.py --checkpoint runs/quickstart_tools/sft [--reps 3]

With `--checkpoint` (a model trained with calculator calls, e.g. quickstart_tools.yaml's sft), the shape is
the quickstart's rl step instead: 8 arithmetic training prompts x 8 samples x 104 new tokens, temperature 1,
top-k 50, the run's compute dtype (bf16 autocast on a CPU with AVX512-BF16), stopping at the end of a reply.
Without tools the same model writes its own (unchecked) call outputs, so both ways produce replies of like
length; the figure is wall time per completion token, with against without.
"""
import argparse
import statistics
import time
from collections import Counter

import torch

from rlkit.lib.text.tokenizer import ToolTokens
from rlkit.lib.generation.sampling import generate
from rlkit.lib.generation.tools import ToolLimits, Toolbox
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.plugins.tools.calculator import calculator


def trained(path: str, reps: int) -> None:
    """The quickstart's rl shape on a model trained to call the calculator (module docstring)."""
    from rlkit.core import dist, policy
    from rlkit.core.handoff import Checkpoint
    from rlkit.core.plugins import load_plugins
    from rlkit.lib.generation.tools import toolbox
    from rlkit.lib.text.task import prompt_messages

    plugins = load_plugins()
    model, tokenizer = policy.load(plugins, Checkpoint.open(path), 160, path)
    task = plugins.tables["task"]["arithmetic"]("train", operands=[2, 3], calculator=True, size=64)
    prompts = [tokenizer.render_for_completion(prompt_messages(task[i])) for i in range(8)]
    box = toolbox(plugins, [{"name": "calculator", "args": {}}], tokenizer, "benchmark")
    dtype = dist.compute_dtype("auto", torch.device("cpu"))
    times, tokens, calls = {"without": [], "with calculator": []}, {}, 0.0
    for _ in range(reps):  # interleaved, so a busy machine slows both alike
        for name, tools in (("without", None), ("with calculator", box)):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                out = generate(model, prompts, 8, 104, top_k=50, seeds=list(range(64)), tools=tools,
                               stop_tokens=tokenizer.stop_ids)
            times[name].append(time.perf_counter() - t0)
            tokens[name] = sum(len(c) for c in out.completions)
            if tools is not None:
                calls = sum(out.tool_calls) / 64
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:>16}: {t:.3f} s median of {reps}, {tokens[name]:,} completion tokens "
              f"({tokens[name] / t:,.0f} tok/s)")
    per_token = {k: med[k] / tokens[k] for k in med}
    print(f"calls/row {calls:.2f}; {dtype}; wall ratio with/without {med['with calculator'] / med['without']:.3f}, "
          f"per completion token {per_token['with calculator'] / per_token['without']:.3f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 prompts x 4 samples x 64 tokens")
    parser.add_argument("--checkpoint", help="a model trained with calculator calls: the quickstart's rl shape")
    args = parser.parse_args()
    if args.checkpoint:
        return trained(args.checkpoint, args.reps)
    torch.manual_seed(0)
    V, P, G, N = (512, 8, 4, 64) if args.quick else (512, 16, 8, 96)
    model = GPT(GPTConfig(depth=4, vocab_size=V, seq_len=256)).eval()
    with torch.no_grad():
        for p in [*model.param_roles()["matrix"], model.lm_head.weight]:
            p.normal_(0, 0.3)
    prompts = [torch.randint(0, V - 8, (int(n),)).tolist() for n in torch.randint(24, 48, (P,))]
    seeds = list(range(P * G))
    free = generate(model, prompts, G, N, top_k=50, seeds=seeds).completions
    (start, _), (end, _) = Counter(t for c in free for t in c).most_common(2)
    digits = lambda text: [100 + ord(c) % 64 for c in text]  # noqa: E731 -- an output's characters as tokens
    box = Toolbox({"calculator": calculator}, ToolTokens(start, end, (V - 2,), (V - 1,)), digits,
                  lambda ids: "+".join(map(str, ids)), ToolLimits(max_calls=8, max_output_tokens=16))
    times = {"without": [], "with calculator": []}
    for _ in range(args.reps):  # interleaved, so a busy machine slows both alike
        for name, tools in (("without", None), ("with calculator", box)):
            t0 = time.perf_counter()
            print(f"... {name}", flush=True)
            out = generate(model, prompts, G, N, top_k=50, seeds=seeds, tools=tools)
            times[name].append(time.perf_counter() - t0)
            if tools is not None:
                calls, forced = sum(out.tool_calls) / len(seeds), sum(out.tool_forced) / len(seeds)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:>16}: {t:.3f} s median of {args.reps} ({P * G * N / t:,.0f} tok/s)")
    print(f"calls/row {calls:.2f}, forced tokens/row {forced:.1f}; ratio with/without {med['with calculator'] / med['without']:.3f}")


if __name__ == "__main__":
    main()
