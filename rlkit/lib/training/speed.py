"""Speed as ratios: model FLOP/s against a matmul peak measured in the same process.

Absolute times drift on a shared machine; MFU (model FLOPs utilisation) =
achieved FLOP/s / peak FLOP/s, both measured here and now, does not.
"""
from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=None)
def matmul_peak(device_type: str, dtype: torch.dtype, n: int = 2048, seconds: float = 0.3) -> float:
    """FLOP/s of an n x n x n matmul a @ b.t() in `dtype` on this device (best of repeated timings): the
    layout of nn.Linear's x @ W.t(), which is what the models multiply (a CPU without bf16 instructions
    runs bf16 a @ b ~20x slower still). n is halved, down to 256, while a product would take over a second
    at the rate a 256^3 product shows, so that a slow dtype (bf16 forced onto such a CPU, ~10x below fp32)
    costs about a second here, not several before the first step."""
    device = torch.device(device_type)
    n = affordable_size(n, _product_seconds(256, device, dtype, seconds=0.0))
    return 2 * n ** 3 / _product_seconds(n, device, dtype, seconds)


def affordable_size(n: int, probe_seconds: float, limit: float = 1.0) -> int:
    """n halved (not below 256) until an n^3 product, timed at `probe_seconds` for 256^3, fits in `limit` s."""
    while n > 256 and probe_seconds * (n / 256) ** 3 > limit:
        n //= 2
    return n


def _product_seconds(n: int, device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """Best time of an n x n x n a @ b.t(), timed at least once and until `seconds` have been spent."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):  # warm up kernels and caches
        a @ b.t()
    _sync(device)
    best, spent = float("inf"), 0.0
    while spent < seconds or spent == 0.0:
        start = time.perf_counter()
        a @ b.t()
        _sync(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Tokens/s and MFU over the steps since the last `read()`."""

    def __init__(self, device: torch.device, dtype: torch.dtype, flops_per_token: int):
        self.device, self.flops_per_token = device, flops_per_token
        self.peak = matmul_peak(device.type, dtype)
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self) -> tuple[float, float]:
        """(tokens/s, MFU) since the last read; resets the window."""
        _sync(self.device)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tok_s = self.tokens / elapsed
        self.tokens, self.start = 0, time.perf_counter()
        return tok_s, tok_s * self.flops_per_token / self.peak
