"""fsdp vs ddp at 2 ranks: training step time and memory per rank, for the d4 GPT and a tiny Llama.

    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/fsdp.py [--steps 10]
    python -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/fsdp.py --offload llama-1b \
        --batch 4 --seq-len 1024 --steps 5                   # one GPU: fsdp with and without CPU offload

Each model is built twice from the same seed, once wrapped in DistributedDataParallel and once sharded by
rlkit.lib.training.parallel (FSDP2, each block then the root), and trained with AdamW on random tokens. Reported per
rank: the median step time (forward, backward, optimizer step), the training state this rank holds
(weights + gradients + AdamW moments, counted from the tensors' local shards), on CUDA the peak allocated
memory, and under fsdp the time of the rl step's full-weight gather into the rollouts' copy. Ratios are fsdp / ddp from the same run. Results go in docs/performance.md.

--offload MODEL compares instead fsdp with and without `parallel.cpu_offload` (FSDP2's CPUOffloadPolicy:
parameters, gradients and AdamW state in host memory) for one model, in bf16 mixed precision as a run uses it:
`llama-1b` is a random-init 1.1B Llama (TinyLlama's shape, built from a config, no download) for one GPU,
`tiny-llama` the same code path at CPU size.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from rlkit.core.dist import compute_dtype
from rlkit.lib.training import parallel


def gpt_d4():
    from rlkit.plugins.models.gpt_model import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=8192, seq_len=256, depth=4)), 8192


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlkit.plugins.models.hf_policy import HFPolicy

    config = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return HFPolicy(LlamaForCausalLM(config), {}, max_len=512), 8192


def llama_1b():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlkit.plugins.models.hf_policy import HFPolicy

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
    return HFPolicy(LlamaForCausalLM(config), {}, max_len=2048), 32000


MODELS = {"gpt-d4": gpt_d4, "tiny-llama": tiny_llama, "llama-1b": llama_1b}


def local_bytes(tensors) -> int:
    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() * t.element_size() for t in tensors)


def state_bytes(model, optimizer) -> int:
    params = list(model.parameters())
    moments = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    return local_bytes(params) + local_bytes(p.grad for p in params if p.grad is not None) + local_bytes(moments)


def measure(build, strategy: str, device, steps: int, batch: int, seq_len: int, dtype=torch.float32,
            offload: bool = False) -> dict:
    torch.manual_seed(0)
    model, vocab = build()
    model = model.to(device)
    gathered = parallel.Gathered(model, dtype) if strategy == "fsdp" else None  # the rollouts' copy
    if strategy == "fsdp":
        parallel.shard(model, dtype, cpu_offload=offload)
        train = model
    else:
        ids = [device.index] if device.type == "cuda" else None
        train = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (batch, seq_len), device=device, generator=None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + 2):  # 2 warm-up steps
        t0 = time.perf_counter()
        train(x, x).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    gather = []
    for _ in range(3 if gathered is not None else 0):  # the rl step's full-weight gather (Session.sampler)
        t0 = time.perf_counter()
        gathered.refresh(model)
        gather.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "state": state_bytes(model, optimizer), "peak": peak,
            "gather_s": statistics.median(gather) if gather else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--offload", choices=sorted(MODELS), help="fsdp with vs without CPU offload, for this model")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.offload:
        offload_table(args, device, rank)
        dist.destroy_process_group()
        return
    rows = []
    for name, build in (("gpt d4", gpt_d4), ("tiny llama", tiny_llama)):
        ddp = measure(build, "ddp", device, args.steps, args.batch, args.seq_len)
        fsdp = measure(build, "fsdp", device, args.steps, args.batch, args.seq_len)
        rows.append((name, ddp, fsdp))
    if rank == 0:
        mib = 1 << 20
        print(f"device {device}, world {dist.get_world_size()}, batch {args.batch} x {args.seq_len} per rank")
        print("model       | step s ddp | step s fsdp | ratio | state MiB ddp | fsdp | ratio | peak MiB ddp | fsdp "
              "| fsdp gather s")
        for name, d, f in rows:
            peaks = f"{d['peak'] / mib:.0f} | {f['peak'] / mib:.0f}" if d["peak"] is not None else "- | -"
            print(f"{name:11s} | {d['step_s']:.4f} | {f['step_s']:.4f} | {f['step_s'] / d['step_s']:.2f} | "
                  f"{d['state'] / mib:.1f} | {f['state'] / mib:.1f} | {f['state'] / d['state']:.2f} | {peaks} | "
                  f"{f['gather_s']:.4f}")
    dist.destroy_process_group()


def offload_table(args, device, rank: int) -> None:
    """fsdp without and with CPU offload for one model, bf16 mixed precision (fp32 weights, reduce)."""
    dtype = compute_dtype("auto", device)  # what `model.dtype: auto` picks: bf16 on CUDA and fast-bf16 CPUs
    build = MODELS[args.offload]
    kept = measure(build, "fsdp", device, args.steps, args.batch, args.seq_len, dtype, offload=False)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    off = measure(build, "fsdp", device, args.steps, args.batch, args.seq_len, dtype, offload=True)
    if rank == 0:
        gib = 1 << 30
        print(f"{args.offload}, device {device}, world {dist.get_world_size()}, batch {args.batch} x {args.seq_len} "
              f"per rank, {dtype}")
        print("fsdp           | step s | peak GiB on device | state GiB | gather s")
        for name, r in (("on the device", kept), ("cpu offload", off)):
            peak = f"{r['peak'] / gib:.2f}" if r["peak"] is not None else "-"
            print(f"{name:14s} | {r['step_s']:.3f} | {peak} | {r['state'] / gib:.2f} | {r['gather_s']:.3f}")
        print(f"offload / on the device: step {off['step_s'] / kept['step_s']:.2f}x" +
              (f", peak {off['peak'] / kept['peak']:.2f}x" if kept["peak"] else ""))


if __name__ == "__main__":
    main()
