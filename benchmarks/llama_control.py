"""Is rlkit's training path what holds the Llama back? The same Llama, pretrained by a plain transformers loop.

    rlkit run experiments/hf_quickstart.yaml name=llama-rlkit stages.pretrain.steps=200 \
        stages.pretrain.optimizer='{name: adamw, args: {lr: 1e-3}}' \
        stages.midtrain=null stages.sft=null stages.rl=null stages.eval_sft=null stages.eval_rl=null
    python benchmarks/llama_control.py runs/llama-rlkit --steps 200 --lr 1e-3

The plain loop is what a transformers user would write, and shares nothing with rlkit's training code:
- the model: torch.manual_seed(seed), then AutoModelForCausalLM.from_config (hf_quickstart.yaml's Llama, the
  vocabulary of the run's tokenizer): the same initial weights rlkit builds;
- the data: the same token stream (rlkit's packed_batches over the arithmetic task's training text, as the
  pretrain entry reads it: 2 passes of 16 rows x 128 tokens a step), since the stream is not in question;
- the loss: the model's own (`labels=`, transformers' ForCausalLMLoss), under bf16 autocast where the CPU has
  it, as rlkit runs (dtype auto);
- the optimizer: torch.optim.AdamW, one group, lr held then linearly down to 0 over the last 30% of steps
  (pretrain's warmdown_frac 0.3), betas (0.9, 0.95), no weight decay: rlkit's adamw at these settings;
- held-out bits/byte: nats of the test text's tokens / (ln 2 x their bytes), special tokens left out, on the
  same 16,384 tokens as the pretrain entry's eval.
Prints the loss every 50 steps and the final held-out bits/byte, beside the rlkit run's (its report card).
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf

from rlkit.core.dist import compute_dtype
from rlkit.core.plugins import load_plugins
from rlkit.lib.text.textdata import iter_texts, packed_batches
from rlkit.lib.text.tokenizer import Tokenizer


def bits_per_byte(model, tokenizer, tasks, autocast, eval_tokens: int = 16384) -> float:
    texts = lambda: iter_texts("arithmetic", tasks=tasks, args={"operands": [2, 3]}, split="test")  # noqa: E731
    token_bytes = tokenizer.token_bytes()
    nats = nbytes = 0.0
    model.eval()
    with torch.no_grad():
        for _, (x, y, _) in zip(range(eval_tokens // (8 * 128)), packed_batches(texts, tokenizer, 8, 128, loop=False)):
            with autocast():
                logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            b = token_bytes[y.flatten()]
            nats += float((loss * (b > 0)).sum())
            nbytes += float(b.sum())
    model.train()
    return nats / (math.log(2) * nbytes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the rlkit run (its tokenizer, config and report card)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rows", type=int, default=16, help="rows a pass (32 a step: 32 / rows passes)")
    args = ap.parse_args()
    cfg = OmegaConf.load(args.run / "config.yaml")
    tokenizer = Tokenizer.load(args.run / "tokenizer")
    tasks = load_plugins().tables["task"]
    llama = {k: v for k, v in OmegaConf.to_container(cfg.model.args.config).items() if k != "model_type"}
    torch.manual_seed(cfg.seed)
    config = transformers.AutoConfig.for_model("llama", **llama, vocab_size=tokenizer.vocab_size)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    dtype = compute_dtype("auto", torch.device("cpu"))
    autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    texts = lambda: iter_texts("arithmetic", tasks=tasks, args={"operands": [2, 3]}, split="train")  # noqa: E731
    batches, passes = packed_batches(texts, tokenizer, args.rows, 128), 32 // args.rows
    hold = args.steps - round(0.3 * args.steps)
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (1.0 if step < hold else (args.steps - step) / (args.steps - hold))
        total = 0.0
        for _ in range(passes):
            x, y, _ = next(batches)
            row = torch.cat([x, y[:, -1:]], dim=1)  # 129 tokens: the model's own loss shifts them by one
            with autocast():
                loss = model(input_ids=row, labels=row).loss / passes
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0 or step == 0:
            print(f"plain loop step {step + 1:4d} | loss {total:.4f}", flush=True)
    bpb = bits_per_byte(model, tokenizer, tasks, autocast)
    report = (args.run / "report.md").read_text()
    theirs = re.search(r"^\| pretrain \|.*\| ([\d.]+) \| ([\d.]+) \|$", report, re.M)
    print(f"plain loop: final loss {total:.4f}, held-out bits/byte {bpb:.4f}")
    print(f"rlkit ({args.run}): final loss {theirs[1]}, held-out bits/byte {theirs[2]}" if theirs else report[:400])


if __name__ == "__main__":
    main()
