"""Rollout throughput: generated tokens/s of rlkit.lib.generation.sampling.generate at the GRPO rollout shape.

Shape: 16 prompts x 16 samples x 128 new tokens (no stop tokens, so exactly 128), depth-4 GPT, vocab 32768,
top-k 50, temperature 1, bf16 autocast; prompts of 48..80 random tokens. Compared, in the same process, with
  (a) one prompt x 8 samples per call, as nanochat's engine batches (same generate, called repeatedly),
  (b) no KV cache: the whole sequence is recomputed for every new token (fewer new tokens, see the table),
and with the compute-bound limit: matmul peak / (2 * matmul weights) tokens/s, the peak measured here
with torch.mm in the same dtype. Also times one sampling step on (256, vocab) logits three ways.

    python benchmarks/rollout_throughput.py [--quick] [--device cuda] [--fp32]
"""
import argparse
import contextlib

import torch

import timing
from timing import matmul_peak, table, timed
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.lib.generation.draw import candidates, choose, row_key
from rlkit.lib.generation.sampling import generate


@torch.inference_mode()
def no_cache(model, prompts, samples, new_tokens, top_k, device):
    """Baseline (b): recompute the full (right-padded) sequence for each new token."""
    rows = [p for p in prompts for _ in range(samples)]
    lens = torch.tensor([len(p) for p in rows], device=device)
    ids = torch.zeros(len(rows), max(lens) + new_tokens, dtype=torch.long, device=device)
    for r, p in enumerate(rows):
        ids[r, :len(p)] = torch.tensor(p)
    arange = torch.arange(len(rows), device=device)
    for t in range(new_tokens):
        T = int(lens.max()) + t
        logits = model(ids[:, :T])[arange, lens + t - 1]  # (N, V)
        values, idx = torch.topk(logits, top_k, dim=-1)
        pick = torch.multinomial(torch.softmax(values, dim=-1), 1)
        ids[arange, lens + t] = idx.gather(1, pick)[:, 0]


def sampler_step_ms(vocab, rows, top_k, device):
    """One sampling step on (rows, vocab) logits: ms for ours, full-vocab multinomial, per-row Generators."""
    logits = torch.randn(rows, vocab, device=device) * 3
    keys = torch.tensor([row_key(s) for s in range(rows)], device=device)

    def ours():
        values, ids = candidates(logits, top_k)
        choose(values, ids, keys, 0, 1.0, 15.0)

    def masked_multinomial():  # top-k by masking, then a multinomial over the whole vocabulary
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        torch.multinomial(torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1), 1)

    gens = [torch.Generator(device=device).manual_seed(s) for s in range(rows)]

    def per_row_generators():  # reproducible per row, but one call per row
        values, ids = torch.topk(logits, top_k, dim=-1)
        probs = torch.softmax(values, dim=-1)
        for r in range(rows):
            torch.multinomial(probs[r], 1, generator=gens[r])

    return [1e3 * timed(f, device, repeat=5) for f in (ours, masked_multinomial, per_row_generators)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small shapes, one repeat")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time with the process's CPU clock instead of the wall clock: steadier on cores shared "
                             "with other processes (exact with --threads 1)")
    parser.add_argument("--fp32", action="store_true", help="also run ours in float32 (no autocast)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing.CPU_CLOCK = args.cpu_clock
    P, G, new, depth, vocab = (4, 4, 16, 2, 4096) if args.quick else (16, 16, 128, 4, 32768)
    nc_prompts, nc_new = (1, 4) if args.quick else ((4, 32) if device.type == "cuda" else (1, 16))
    repeat = 1 if args.quick else 2
    top_k = 50

    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=depth, vocab_size=vocab, seq_len=512)).to(device)
    with torch.no_grad():  # a trained-looking spread of logits (a fresh lm_head gives near-uniform ones)
        model.lm_head.weight.normal_(0, 0.05)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (int(torch.randint(48, 81, (), generator=gen)),), generator=gen).tolist()
               for _ in range(P)]
    width = model.config.width
    matmul_weights = sum(p.numel() for p in model.param_roles()["matrix"]) + model.lm_head.weight.numel()
    shapes = [(P * G, width, vocab), (P * G, width, 4 * width), (2048, 2048, 2048)]

    print(f"device {device}, depth {depth}, width {width}, vocab {vocab}, {matmul_weights / 1e6:.1f}M matmul weights, "
          f"{P} prompts x {G} samples x {new} new tokens, top-k {top_k}, T=1, threads {torch.get_num_threads()}, "
          f"{'CPU' if timing.CPU_CLOCK else 'wall'} clock, torch {torch.__version__}")
    rows = []
    for dtype in [torch.bfloat16] + ([torch.float32] if args.fp32 else []):
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        amp = torch.autocast(device.type, dtype) if dtype != torch.float32 else contextlib.nullcontext()
        peak = matmul_peak(shapes, dtype, device)

        def ours():
            generate(model, prompts, G, new, temperature=1.0, top_k=top_k, seeds=list(range(P * G)))

        def one_prompt_at_a_time():
            for p in prompts:
                generate(model, [p], 8, new, temperature=1.0, top_k=top_k, seeds=list(range(8)))

        measured = []  # (label, tokens/s)
        with amp:
            generate(model, prompts[:2], 2, 4, top_k=top_k)  # warm up
            measured.append((f"ours: {P} prompts x {G} in one call", P * G * new / timed(ours, device, repeat)))
            measured.append(("(a) 1 prompt x 8 per call", P * 8 * new / timed(one_prompt_at_a_time, device, 1)))
            if dtype == torch.bfloat16:
                s = timed(lambda: no_cache(model, prompts[:nc_prompts], G, nc_new, top_k, device), device, 1)
                measured.append((f"(b) no cache, {nc_prompts} x {G} x {nc_new} tokens", nc_prompts * G * nc_new / s))
        peak = max(peak, matmul_peak(shapes, dtype, device))  # the best reading, before or after
        limit = peak / (2 * matmul_weights)
        for label, tok_s in measured:
            speedup = measured[0][1] / tok_s
            rows.append([f"{label} ({name})", f"{tok_s:,.0f}", f"{tok_s / limit:.1%}", f"{speedup:.1f}x"])
        rows.append([f"compute-bound limit ({name}: mm peak {peak / 1e9:,.0f} GFLOP/s)", f"{limit:,.0f}", "100%", ""])
    table(["generation", "tokens/s", "of limit", "ours is"], rows)

    print()
    ms = sampler_step_ms(vocab, P * G, top_k, device)
    table(["one sampling step on (%d, %d) float32 logits" % (P * G, vocab), "ms"],
          [["ours: top-k, inverse CDF over k, counter hash", f"{ms[0]:.2f}"],
           ["mask to top-k, multinomial over the vocab", f"{ms[1]:.2f}"],
           ["top-k, one torch.Generator per row", f"{ms[2]:.2f}"]])


if __name__ == "__main__":
    main()
