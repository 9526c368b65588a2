"""What both benchmarks share: a clock, timing, the in-process matmul peak, and a plain table."""
import time

import torch

CPU_CLOCK = False  # --cpu-clock: time by this process's CPU time (per thread), not the wall clock


def now():
    return time.process_time() / torch.get_num_threads() if CPU_CLOCK else time.perf_counter()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    """Best time (s) over `repeat` calls: the minimum is the least noisy figure on a shared CPU."""
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = now()
        fn()
        sync(device)
        best = min(best, now() - t0)
    return best


def matmul_peak(shapes, dtype, device, budget=2.0):
    """Best FLOP/s of torch.mm(a, b.t()) over the (M, K, N) shapes (b stored (N, K): nn.Linear's layout, what
    the models multiply), in `dtype` on `device`, best of 5 timings each. On a CPU each M is cut so one
    product takes at most ~`budget` seconds at the rate a 64-row product shows: on a CPU without bf16
    instructions bf16 runs ~10x below fp32 in this layout (~150x below in a @ b's), and a whole
    (4096, 256, 32768) product would take seconds; the fp32 shapes stay whole."""
    best = 0.0
    for M, K, N in shapes:
        if device.type == "cpu":
            M = min(M, max(64, int(_rate(64, K, N, dtype, device) * budget / (2 * K * N))))
        a, b = torch.randn(M, K, device=device).to(dtype), torch.randn(N, K, device=device).to(dtype)
        out = torch.empty(M, N, device=device, dtype=dtype)
        iters = max(2, int(4e11 // (2 * M * K * N))) if device.type == "cuda" else max(1, int(2e9 // (2 * M * K * N)))
        torch.mm(a, b.t(), out=out)
        seconds = timed(lambda: [torch.mm(a, b.t(), out=out) for _ in range(iters)], device, repeat=5) / iters
        best = max(best, 2 * M * K * N / seconds)
    return best


def _rate(M, K, N, dtype, device):
    a, b = torch.randn(M, K, device=device).to(dtype), torch.randn(N, K, device=device).to(dtype)
    torch.mm(a, b.t())
    return 2 * M * K * N / timed(lambda: torch.mm(a, b.t()), device)


def table(header, rows):
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
