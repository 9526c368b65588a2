"""Rollouts of a Hugging Face model: rlkit's sampler against transformers' model.generate, same model, same batch.

    python benchmarks/hf_rollout.py            # 16 prompts x 16 samples x 128 new tokens, Llama d4 w256, vocab 32768
    python benchmarks/hf_rollout.py --quick    # a smoke run

Both sample G completions of each of P prompts at T=1, top-k 50, to exactly `new` tokens (no stop token):
rlkit prefills each prompt once and repeats its cache for its G rows (hf_decode.py); generate gets the
prompts left-padded with num_return_sequences=G, as a user would call it. Printed: tokens/s and the ratio,
measured in one run (absolute figures drift on a shared machine; the ratio much less).
"""
import argparse
import contextlib

import torch

import timing
from timing import table, timed
from rlkit.lib.generation.sampling import generate
from rlkit.plugins.models.hf_policy import HFPolicy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small shapes, one repeat")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-clock", action="store_true", help="time by this process's CPU clock (shared cores)")
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing.CPU_CLOCK = args.cpu_clock
    P, G, new, layers, width, vocab = (4, 4, 16, 2, 128, 4096) if args.quick else (16, 16, 128, 4, 256, 32768)
    repeat = 1 if args.quick else 2
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=width // 64, num_key_value_heads=width // 64, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=None, eos_token_id=None)
    model = LlamaForCausalLM(config).to(device).eval()
    policy = HFPolicy(model, {}, max_len=512)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, vocab, (int(torch.randint(48, 81, (), generator=gen)),), generator=gen).tolist()
               for _ in range(P)]
    Tp = max(map(len, prompts))
    left = torch.zeros(P, Tp, dtype=torch.long)
    mask = torch.zeros(P, Tp, dtype=torch.long)
    for p, prompt in enumerate(prompts):
        left[p, Tp - len(prompt):], mask[p, Tp - len(prompt):] = torch.tensor(prompt), 1
    left, mask = left.to(device), mask.to(device)
    print(f"device {device}, Llama {layers} layers x {width}, vocab {vocab}, {P} prompts x {G} samples x {new} new "
          f"tokens, top-k 50, T=1, threads {torch.get_num_threads()}, torch {torch.__version__}")

    rows = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        amp = torch.autocast(device.type, dtype) if dtype != torch.float32 else contextlib.nullcontext()

        def ours():
            generate(policy, prompts, G, new, temperature=1.0, top_k=50, seeds=list(range(P * G)))

        def theirs():
            with torch.no_grad():
                model.generate(left, attention_mask=mask, do_sample=True, top_k=50, temperature=1.0,
                               num_return_sequences=G, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)

        with amp:
            ours(), theirs()  # warm up
            mine, ref = P * G * new / timed(ours, device, repeat), P * G * new / timed(theirs, device, repeat)
        rows += [[f"rlkit sampler ({name})", f"{mine:,.0f}", f"{mine / ref:.1f}x"],
                 [f"model.generate ({name})", f"{ref:,.0f}", "1.0x"]]
    table(["generation", "tokens/s", "vs generate"], rows)


if __name__ == "__main__":
    main()
