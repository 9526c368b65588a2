"""One Muon + AdamW step with the orthogonalization in bf16 against fp32, on this device.

Muon orthogonalizes each matrix's update with 5 quintic iterations of batched matmuls (muon.py). The
built-in runs them in bf16 only where bf16 matmuls are fast (CUDA; CPUs with AVX512-BF16 or AMX) and in
fp32 elsewhere: an AVX2-only CPU has no bf16 matmul unit, torch emulates one, and that costs ~10x fp32
in nn.Linear's layout (x @ W.t()), ~150x in a plain a @ b.
Here both are forced in turn on rlkit's GPT (random gradients), alternating rounds, best round kept:
- "as shipped": whatever `fast_bf16` says for this device (printed);
- "bf16" and "fp32": the iteration forced to that dtype.

    python benchmarks/muon_step.py [--depths 4 [12 ...]] [--rounds 3] [--device cpu|cuda]
"""
import argparse

import torch

from rlkit.core.dist import fast_bf16
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.plugins.optimizers import muon as muon_plugin
from rlkit.plugins.optimizers import muon_optimizer
from timing import now, sync, table


def one_step(model, forced):
    """Seconds of one optimizer step (fresh optimizer, momentum 0 so every step does the same work)."""
    shipped = muon_optimizer.fast_bf16
    if forced is not None:
        muon_optimizer.fast_bf16 = lambda device: forced == "bf16"
    try:
        opt = muon_plugin.muon(model, momentum=0.0)
        device = next(model.parameters()).device
        sync(device)
        t0 = now()
        opt.step()
        sync(device)
        return now() - t0
    finally:
        muon_optimizer.fast_bf16 = shipped


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[4])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}: bf16 matmuls fast here: {fast_bf16(device)} "
          f"(as shipped, Muon orthogonalizes in {'bf16' if fast_bf16(device) else 'fp32'})")
    rows = []
    for depth in args.depths:
        model = GPT(GPTConfig(depth=depth, vocab_size=512, seq_len=128)).to(device)
        for p_ in model.parameters():
            p_.grad = torch.randn_like(p_) * 1e-3
        ways = {"as shipped": None, "bf16": "bf16", "fp32": "fp32"}
        best = {name: float("inf") for name in ways}
        for _ in range(args.rounds):
            for name, forced in ways.items():
                best[name] = min(best[name], one_step(model, forced))
        n = sum(p_.numel() for p_ in model.parameters())
        for name in ways:
            rows.append([f"d{depth} ({n / 1e6:.1f}M)", name, f"{best[name] * 1e3:,.1f}",
                         f"{best['bf16'] / best[name]:.2f}x"])
    table(["model", "orthogonalization", "ms / step", "vs bf16"], rows)


if __name__ == "__main__":
    main()
