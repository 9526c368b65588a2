"""Training throughput: tokens/s and MFU of one step (forward + backward + AdamW) of rlkit's GPT.

Depth 4 and 6, seq_len 512, vocab 32768, float32 and bf16 autocast, eager and torch.compile'd, on random
tokens. MFU = achieved FLOP/s / matmul peak, where achieved FLOP/s = tokens/s * model.flops_per_token()
(nanochat's count: 6 * matmul weights + 12 * n_layer * width * seq_len) and the peak is the best torch.mm
FLOP/s measured in this process, in the same dtype, over shapes of the step ((B*T, width, vocab),
(B*T, width, 4*width)) and a 2048^3 product, re-measured after every configuration (the best reading is
used for every row). A step's time is the median over the timed steps.

    python benchmarks/train_throughput.py [--quick] [--device cuda] [--batch 8] [--depths 4 6]
"""
import argparse
import contextlib
import statistics

import torch

import timing
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from timing import matmul_peak, now, sync, table


def step_seconds(model, batch, seq_len, vocab, dtype, device, compiled, warmup, steps):
    """Median wall time of one forward + backward + AdamW step on random tokens."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    fwd = torch.compile(model) if compiled else model
    amp = torch.autocast(device.type, dtype) if dtype != torch.float32 else contextlib.nullcontext()
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, vocab, (batch, seq_len + 1), device=device, generator=gen)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = now()
        with amp:
            loss = fwd(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(now() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: depth 2, vocab 4096, seq 128, 1 step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time with the process's CPU clock instead of the wall clock: steadier on cores shared "
                             "with other processes (exact with --threads 1)")
    parser.add_argument("--batch", type=int, default=None, help="sequences a step (default 8 on CPU, 32 on CUDA)")
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 6], help="model depths to measure")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing.CPU_CLOCK = args.cpu_clock
    batch = args.batch or (8 if device.type == "cpu" else 32)
    quick = ([2], 4096, 128, 1, 1)
    depths, vocab, seq_len, warmup, steps = quick if args.quick else (args.depths, 32768, 512, 2, args.steps)
    print(f"device {device}, batch {batch} x seq {seq_len} = {batch * seq_len} tokens a step, vocab {vocab}, "
          f"threads {torch.get_num_threads()}, {'CPU' if timing.CPU_CLOCK else 'wall'} clock, torch {torch.__version__}")

    # the peak of each dtype is measured again after every configuration and the best reading is used for
    # all rows: on shared cores a peak read in a busy moment would flatter the rows measured against it
    peaks, results = {}, []
    for depth in depths:
        for dtype in (torch.float32, torch.bfloat16):
            for compiled in ([False] if args.no_compile else [False, True]):
                torch.manual_seed(0)
                model = GPT(GPTConfig(depth=depth, vocab_size=vocab, seq_len=seq_len)).to(device)
                width = model.config.width
                shapes = [(batch * seq_len, width, vocab), (batch * seq_len, width, 4 * width), (2048, 2048, 2048)]
                s = step_seconds(model, batch, seq_len, vocab, dtype, device, compiled, warmup, steps)
                peaks[dtype] = max(peaks.get(dtype, 0.0), matmul_peak(shapes, dtype, device))
                results.append((depth, dtype, compiled, batch * seq_len / s, model.flops_per_token()))
                mode = "compiled" if compiled else "eager"
                print(f"d{depth} {dtype} {mode}: {results[-1][3]:,.0f} tokens/s", flush=True)
                del model
    rows = []
    for depth, dtype, compiled, tok_s, flops in results:
        name = "fp32" if dtype == torch.float32 else "bf16"
        rows.append([f"d{depth} {name} {'compiled' if compiled else 'eager'}", f"{tok_s:,.0f}", f"{flops / 1e6:.1f}M",
                     f"{peaks[dtype] / 1e9:,.0f}", f"{tok_s * flops / peaks[dtype]:.1%}"])
    print()
    table(["config", "tokens/s", "FLOPs/token", "mm peak GFLOP/s", "MFU"], rows)

if __name__ == "__main__":
    main()
