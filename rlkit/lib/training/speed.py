"""Tokens/s, the primary speed figure, and MFU (model FLOPs utilisation) = achieved FLOP/s / a peak FLOP/s.

The peak is fixed per device kind, so MFU compares across runs: `mfu_peak_flops:` in the YAML when given,
else a matmul peak measured once per (device name, dtype) and kept in ~/.cache/rlkit/matmul_peak.json
($XDG_CACHE_HOME); delete an entry there to measure again. A peak measured in every run would move with
the machine's load, so the same model could show very different MFU while its tokens/s fell. A recorded peak
is a lower bound of what the device can do: when a run achieves more (MFU over 100%), the record was taken
on a busy machine, so it is measured again and raised to the larger of that and the achieved rate.

    peak, source = peak_flops(device, dtype, cfg.get("mfu_peak_flops"))
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import torch

from rlkit.core.files import atomic_write


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


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device, dtype: torch.dtype, configured: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): `configured` (the YAML's mfu_peak_flops), else this device kind's
    recorded peak, measured and recorded on first use."""
    if configured is not None:
        return float(configured), "mfu_peak_flops in the YAML"
    file, key = peak_file(), device_key(torch.device(device), dtype)
    try:
        recorded = json.loads(file.read_text())
    except (OSError, ValueError):
        recorded = {}
    if not isinstance(recorded.get(key), dict) or not recorded[key].get("flops"):
        recorded = record(key, matmul_peak(torch.device(device).type, dtype, seconds=1.0))
    return float(recorded[key]["flops"]), f"matmul peak of {key}, measured {recorded[key]['measured']} ({file})"


def record(key: str, flops: float) -> dict:
    """Record `flops` as the peak of device kind `key` (in peak_file()); -> every record."""
    file = peak_file()
    try:
        recorded = json.loads(file.read_text())
    except (OSError, ValueError):
        recorded = {}
    recorded[key] = {"flops": flops, "measured": time.strftime("%Y-%m-%d")}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, json.dumps(recorded, indent=2) + "\n")
    except OSError:  # a read-only home: this process keeps the value it measured
        pass
    return recorded


def raise_peak(device: torch.device, dtype: torch.dtype, achieved: float) -> float:
    """A run achieved `achieved` FLOP/s, above the recorded peak (measured on a busy machine): measure again
    and record the larger of the two; -> the new peak."""
    flops = max(achieved, matmul_peak(torch.device(device).type, dtype, seconds=1.0))
    record(device_key(torch.device(device), dtype), flops)
    peak_flops.cache_clear()
    return flops


def peak_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlkit" / "matmul_peak.json"


def device_key(device: torch.device, dtype: torch.dtype) -> str:
    """The device kind a peak belongs to: the GPU's name, or the CPU's model and thread count; and the dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"{_cpu_model()} x{torch.get_num_threads()} threads"
    else:
        name = device.type
    return f"{name}, {str(dtype).removeprefix('torch.')}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


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
    """Tokens/s and MFU over the steps since the last `read()`; `peak`: the YAML's mfu_peak_flops, if any."""

    def __init__(self, device: torch.device, dtype: torch.dtype, flops_per_token: int, peak: float | None = None):
        self.device, self.dtype, self.flops_per_token, self.configured = device, dtype, flops_per_token, peak
        self.peak = peak_flops(device, dtype, peak)[0]
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self) -> tuple[float, float]:
        """(tokens/s, MFU) since the last read; resets the window."""
        _sync(self.device)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tok_s = self.tokens / elapsed
        achieved = tok_s * self.flops_per_token
        if achieved > self.peak and self.configured is None:  # the recorded peak was measured low
            self.peak = raise_peak(self.device, self.dtype, achieved)
        self.tokens, self.start = 0, time.perf_counter()
        return tok_s, achieved / self.peak
