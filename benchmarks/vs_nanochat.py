"""rlkit versus nanochat on the same shapes: training-step and rollout tokens/s, each side in its own process.

Training step (forward + backward + optimizer step, random tokens, batch 8 x seq 512, vocab 32768):
  rlkit:    GPT(depth, head_dim 64) + muon(model) (Muon on the block matrices, AdamW on the rest);
            bf16 = torch.autocast(bfloat16) around the forward, weights float32.
  nanochat: its GPT (width = depth * 64 rounded up to its head_dim 128, window_pattern "L") +
            model.setup_optimizer() (its MuonAdamW, whose Muon and AdamW kernels nanochat always
            torch.compile's, also in the "eager" rows); bf16 = NANOCHAT_DTYPE=bfloat16, its own switch.
  "compiled" = torch.compile(model) on both sides (nanochat: dynamic=False, as its base_train does).
Rollouts: 16 prompts (48..80 random tokens) x 16 samples x 128 new tokens, top-k 50, temperature 1, bf16
(rollout-bf16) or fp32 (rollout-fp32: what `dtype: auto` picks on a CPU without fast bf16), lm_head redrawn
N(0, 0.05) on both sides so logits spread as a trained model's do:
  rlkit:    rlkit.lib.generation.sampling.generate, all 256 rows in one call, under autocast(bf16) for bf16;
  nanochat: Engine(model, tokenizer).generate_batch(prompt, num_samples=16, ...) once per prompt.

Allocator (CPU): `rlkit run` makes malloc keep freed memory (rlkit/lib/training/hostmem.py: a step's 512 MB logits
then reuse mapped pages instead of faulting fresh ones in). --malloc as-shipped (the default) does the same
in rlkit's child and leaves nanochat's as nanochat runs; --malloc both gives nanochat's child the same
setting, which compares the code alone; --malloc neither leaves both at glibc's default.

Method: every (configuration, side) runs in its own child process (`--worker`), which builds the model,
warms up (compiles) and then times one round each time the parent asks; the parent alternates the two sides
round by round (the side that goes first alternates too), keeps each side's best round, and prints
tokens/s, the rlkit / nanochat ratio and the load average (os.getloadavg) when the row finished. rlkit's
MFU (training) and share of the compute-bound limit (rollouts: peak / (2 * matmul weights)) are taken
against the best torch.mm FLOP/s measured in the parent between configurations (timing.matmul_peak), or
against --peak-tflops when given (a GPU's datasheet peak, as nanochat's MFU is).

nanochat is imported from --nanochat PATH in its child only; no nanochat code lives in rlkit and none of
its files is patched. Shims, all in that child's memory: NANOCHAT_DTYPE is set before the import (its dtype
switch); Engine gets a stand-in tokenizer whose special tokens are -1 (never sampled, so every row runs
the full 128 tokens, as rlkit's rows do without stop tokens). Without CUDA nanochat uses its own SDPA
fallback (flash_attention.py); on CUDA without hub access its FA3 loader fails quietly to the same fallback.

    python benchmarks/vs_nanochat.py --nanochat /tmp/nanochat          # the whole table
    python benchmarks/vs_nanochat.py                                   # rlkit's side and its MFU only
    python benchmarks/vs_nanochat.py --nanochat /tmp/nanochat --only d4-bf16-eager d4-fp32-eager --rounds 4
    python benchmarks/vs_nanochat.py --quick [--nanochat PATH]         # smoke run (small shapes, 1 round)
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

import timing
from timing import matmul_peak, table, timed


def configurations(args):
    """Names like d4-bf16-eager / rollout-bf16: all of them, or those of --only in its order."""
    names = [f"d{d}-{dt}-{mode}" for d in args.depths for dt in ("bf16", "fp32") for mode in ("eager", "compiled")]
    names += ["rollout-bf16", "rollout-fp32"]
    if args.only and set(args.only) - set(names):
        raise SystemExit(f"vs_nanochat: --only {' '.join(sorted(set(args.only) - set(names)))}: not among {' '.join(names)}")
    return args.only or names


# ---------------------------------------------------------------- child side: one model, timed on demand

def batch_tokens(spec, device):
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"] + 1), generator=gen).to(device)
    return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()


def prompts(spec):
    gen = torch.Generator().manual_seed(1)
    lens = [int(torch.randint(48, 81, (), generator=gen)) for _ in range(spec["prompts"])]
    return [torch.randint(0, spec["vocab"], (n,), generator=gen).tolist() for n in lens]


def rlkit_model(spec, device):
    from rlkit.plugins.models.gpt_model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=spec["depth"], vocab_size=spec["vocab"], seq_len=spec["seq"])).to(device)
    weights = sum(p.numel() for p in model.param_roles()["matrix"]) + model.lm_head.weight.numel()
    return model, model.flops_per_token(), weights


def nanochat_model(spec, device):
    os.environ["NANOCHAT_DTYPE"] = "bfloat16" if spec["dtype"] == "bf16" else "float32"  # read at import
    sys.path.insert(0, spec["nanochat"])
    from nanochat.gpt import GPT, GPTConfig

    width = math.ceil(spec["depth"] * 64 / 128) * 128  # base_train: depth * aspect_ratio 64, head_dim 128
    heads = width // 128
    config = GPTConfig(sequence_len=spec["seq"], vocab_size=spec["vocab"], n_layer=spec["depth"], n_head=heads,
                       n_kv_head=heads, n_embd=width, window_pattern="L")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    return model, model.estimate_flops(), model.num_matmul_params()


def train_round(spec, device):
    """A closure timing `steps` training steps (best one) -> tokens/s; plus FLOPs/token and matmul weights."""
    build = nanochat_model if spec["side"] == "nanochat" else rlkit_model
    model, flops, weights = build(spec, device)
    if spec["side"] == "nanochat":
        opt = model.setup_optimizer()
        amp = None
    else:
        from rlkit.plugins.optimizers.muon import muon

        opt = muon(model)
        amp = torch.bfloat16 if spec["dtype"] == "bf16" else None
    fwd = (torch.compile(model, dynamic=False) if spec["side"] == "nanochat" else torch.compile(model)) \
        if spec["mode"] == "compiled" else model
    x, y = batch_tokens(spec, device)

    def step():
        with torch.autocast(device.type, amp, enabled=amp is not None):
            loss = fwd(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(spec["warmup"]):
        step()
    tokens = x.numel()
    return (lambda: tokens / timed(step, device, spec["steps"])), flops, weights


def rollout_round(spec, device):
    build = nanochat_model if spec["side"] == "nanochat" else rlkit_model
    model, flops, weights = build(spec, device)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.05)
    P, G, new = spec["prompts"], spec["samples"], spec["new"]
    ps = prompts(spec)
    if spec["side"] == "nanochat":
        from nanochat.engine import Engine

        class NoSpecials:  # Engine's tool-use state machine asks for these; -1 is never sampled
            def encode_special(self, s):
                return -1

            def get_bos_token_id(self):
                return -1

        engine = Engine(model, NoSpecials())

        def run(ps=ps):
            for i, p in enumerate(ps):
                engine.generate_batch(p, num_samples=G, max_tokens=new, temperature=1.0, top_k=50, seed=i)
    else:
        from rlkit.lib.generation.sampling import generate

        def run(ps=ps):
            with torch.autocast(device.type, torch.bfloat16, enabled=spec["dtype"] == "bf16"):
                generate(model, ps, G, new, temperature=1.0, top_k=50, seeds=list(range(len(ps) * G)))

    run(ps[:2])  # warm-up
    return (lambda: P * G * new / timed(run, device, 1)), flops, weights


def worker(spec):
    device = torch.device(spec["device"])
    if device.type == "cpu" and (spec["malloc"] == "both" or spec["malloc"] == "as-shipped" and spec["side"] == "rlkit"):
        from rlkit.lib.training import hostmem  # what `rlkit run` does on a CPU: malloc keeps freed pages
        hostmem.keep_freed_memory()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    timing.CPU_CLOCK = spec["cpu_clock"]
    make = rollout_round if spec["kind"] == "rollout" else train_round
    round_fn, flops, weights = make(spec, device)
    print("@@ready " + json.dumps({"flops": flops, "weights": weights}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        print(f"@@result {round_fn()}", flush=True)


# ---------------------------------------------------------------- parent side: alternate the children

class Child:
    def __init__(self, spec):
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.side = spec["side"]
        self.info = json.loads(self.read("@@ready "))

    def read(self, tag):
        for line in self.proc.stdout:
            if line.startswith(tag):
                return line[len(tag):]
        self.err.seek(0)
        tail = self.err.read()[-3000:]
        raise SystemExit(f"vs_nanochat: the {self.side} worker exited before '{tag.strip()}':\n{tail}")

    def round(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.read("@@result "))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def spec_for(name, side, args):
    kind = "rollout" if name.startswith("rollout") else "train"
    parts = name.split("-")
    spec = dict(side=side, kind=kind, device=args.device, threads=args.threads, cpu_clock=args.cpu_clock, malloc=args.malloc,
                nanochat=args.nanochat, vocab=args.vocab, seq=args.seq, batch=args.batch, steps=args.steps,
                dtype=parts[-1], depth=args.rollout_depth, mode="eager",
                prompts=args.prompts, samples=args.samples, new=args.new_tokens)
    if kind == "train":
        spec.update(depth=int(parts[0][1:]), dtype=parts[1], mode=parts[2],
                    warmup=3 if parts[2] == "compiled" else 1)
    return spec


def compare(name, args):
    """Best tokens/s of each side over alternating rounds, and the rlkit child's info."""
    sides = ["nanochat", "rlkit"] if args.nanochat else ["rlkit"]
    children = {}
    try:
        for side in sides:
            children[side] = Child(spec_for(name, side, args))
        best = {side: 0.0 for side in sides}
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                best[side] = max(best[side], children[side].round())
        return best, children["rlkit"].info
    finally:
        for child in children.values():
            child.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanochat", default=None, help="a local nanochat checkout (the folder holding nanochat/)")
    parser.add_argument("--only", nargs="+", default=None, help="configurations to run, e.g. d4-bf16-eager rollout-bf16")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per round (best kept)")
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rollout-depth", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in each child (default: torch's)")
    parser.add_argument("--cpu-clock", action="store_true", help="time by each child's CPU clock (see timing.py)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="take MFU against this peak (e.g. 989 for H100/H200 dense bf16) instead of the measured mm peak")
    parser.add_argument("--malloc", choices=["as-shipped", "both", "neither"], default="as-shipped",
                        help="CPU only: which children keep freed memory (rlkit/lib/training/hostmem.py); as-shipped: "
                             "rlkit's, as `rlkit run` does, and not nanochat's; both: the same allocator on both sides")
    parser.add_argument("--quick", action="store_true", help="smoke run: d2, vocab 4096, seq 128, 4 x 4 x 16, 1 round")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.nanochat and not os.path.isfile(os.path.join(args.nanochat, "nanochat", "gpt.py")):
        raise SystemExit(f"vs_nanochat: --nanochat {args.nanochat}: no nanochat/gpt.py there; give the checkout's root")
    if args.quick:
        args.depths, args.vocab, args.seq, args.rounds, args.steps = [2], 4096, 128, 1, 1
        args.rollout_depth, args.prompts, args.samples, args.new_tokens = 2, 4, 4, 16
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing.CPU_CLOCK = args.cpu_clock
    print(f"device {device}, batch {args.batch} x seq {args.seq}, vocab {args.vocab}, {args.rounds} rounds, "
          f"threads {args.threads or torch.get_num_threads()}, {'CPU' if args.cpu_clock else 'wall'} clock, "
          f"malloc {args.malloc}, "
          f"torch {torch.__version__}, nanochat {args.nanochat or '(not given)'}", flush=True)

    peaks, rows = {}, []
    for name in configurations(args):
        best, info = compare(name, args)
        rows.append((name, best, info, os.getloadavg()[0]))
        ratio = f", rlkit / nanochat {best['rlkit'] / best['nanochat']:.2f}x" if args.nanochat else ""
        print(f"{name}: " + ", ".join(f"{s} {v:,.0f} tok/s" for s, v in best.items()) + ratio
              + f" (load {rows[-1][3]:.2f})", flush=True)
        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        width = 64 * (args.rollout_depth if name.startswith("rollout") else int(name.split("-")[0][1:]))  # rlkit's
        shapes = [(args.batch * args.seq, width, args.vocab), (args.batch * args.seq, width, 4 * width), (2048, 2048, 2048)]
        peaks[dtype] = max(peaks.get(dtype, 0.0), matmul_peak(shapes, dtype, device))

    out = []
    for name, best, info, load in rows:
        peak = args.peak_tflops * 1e12 or peaks[torch.bfloat16 if "bf16" in name else torch.float32]
        if name.startswith("rollout"):
            use = f"{best['rlkit'] / (peak / (2 * info['weights'])):.1%} of limit"
        else:
            use = f"{best['rlkit'] * info['flops'] / peak:.1%} MFU"
        nano = [f"{best['nanochat']:,.0f}", f"{best['rlkit'] / best['nanochat']:.2f}x"] if args.nanochat else []
        out.append([name] + nano + [f"{best['rlkit']:,.0f}", use, f"{load:.2f}"])
    print()
    header = ["config"] + (["nanochat tok/s", "rlkit / nanochat"] if args.nanochat else []) + \
        ["rlkit tok/s", "rlkit MFU / limit", "load avg"]
    table(header, out)
    print("mm peaks measured (GFLOP/s): " + ", ".join(f"{d}: {p / 1e9:,.0f}" for d, p in peaks.items())
          + (f"; MFU and limits taken against the given peak, {args.peak_tflops:g} TFLOP/s" if args.peak_tflops else ""))


if __name__ == "__main__":
    main()
