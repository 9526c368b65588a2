"""The eager training step with each of its bit-for-bit rewrites on and off: what each one saves.

Two rewrites of the GPT's eager step compute the same numbers as the plain formula in fewer passes over
memory (docs/performance.md):
- relu_squared: the MLP's relu(x)^2 with a two-pass backward (relu_squared.py), against F.relu(x).square();
- the loss's row blocks: softcap_loss.CHUNK_BYTES at 2 MB (as shipped) against 16 MB (before).
Each configuration trains the same GPT from the same weights on the same random tokens (Muon + AdamW,
`--accum` forward + backward passes a step, as the quickstart's pretrain does), alternating rounds, best
step kept. The first steps' losses of every configuration are compared with the plain one's: the table
says whether they are identical to the last bit.

    python benchmarks/eager_parts.py                       # the quickstart's shape: d4, vocab 512, 2 x 16 x 128
    python benchmarks/eager_parts.py --vocab 32768 --seq 512 --batch 8 --accum 1 --threads 1   # vs_nanochat's
"""
import argparse

import torch
import torch.nn.functional as F

from rlkit.lib.training import hostmem
from rlkit.plugins.models import gpt_model as gpt_module
from rlkit.plugins.models import softcap_loss
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.plugins.models.relu_squared import relu_squared
from rlkit.plugins.optimizers.muon import muon
from timing import now, table

CONFIGS = {  # name -> (MLP activation, loss block bytes)
    "plain (before)": (lambda x: F.relu(x).square(), 1 << 24),
    "relu_squared": (relu_squared, 1 << 24),
    "2 MB loss blocks": (lambda x: F.relu(x).square(), 1 << 21),
    "both (as shipped)": (relu_squared, 1 << 21),
}


def use(name):
    gpt_module.relu_squared, softcap_loss.CHUNK_BYTES = CONFIGS[name]


def trainer(args):
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=args.depth, vocab_size=args.vocab, seq_len=args.seq))
    opt = muon(model)
    idx = torch.randint(0, args.vocab, (args.accum, args.batch, args.seq + 1), generator=torch.Generator().manual_seed(1))

    def step():
        for x in idx:
            loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("depth", 4), ("vocab", 512), ("seq", 128), ("batch", 16), ("accum", 2), ("rounds", 5),
                          ("check_steps", 5), ("threads", 0)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args()
    hostmem.keep_freed_memory()  # as `rlkit run` does on a CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    losses = {}
    for name in CONFIGS:  # the same numbers? each from fresh weights
        use(name)
        step = trainer(args)
        losses[name] = [step() for _ in range(args.check_steps)]
    step, best = trainer(args), {name: float("inf") for name in CONFIGS}  # one model: every round the same work
    for r in range(args.rounds):
        for name in (list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]):
            use(name)
            t0 = now()
            step()
            best[name] = min(best[name], now() - t0)
    base = best["plain (before)"]
    tokens = args.accum * args.batch * args.seq
    print(f"d{args.depth}, vocab {args.vocab}, {args.accum} x {args.batch} x {args.seq} tokens a step, "
          f"{torch.get_num_threads()} threads, best of {args.rounds} alternating rounds, torch {torch.__version__}")
    rows = [[name, f"{best[name] * 1e3:,.0f}", f"{tokens / best[name]:,.0f}", f"{base / best[name]:.3f}x",
             "yes" if losses[name] == losses["plain (before)"] else "NO"] for name in CONFIGS]
    table(["configuration", "ms / step", "tokens/s", "vs plain", f"same {args.check_steps} losses"], rows)


if __name__ == "__main__":
    main()
