#!/usr/bin/env bash
# Part 4 of issue 18: the built-in GPT at real size on one CUDA GPU (H100/H200), with nanochat alongside when a
# checkout is given. Training: depth 12 and 20, seq 2048, batch 32 (65,536 tokens a step), bf16 autocast,
# torch.compile, Muon + AdamW; MFU against the H100/H200 dense bf16 datasheet peak, 989 TFLOP/s (nanochat's
# base_train reports its MFU against the same figure: ~41-46% at d20 on an H100). Rollouts: depth 20,
# 16 prompts x 16 samples x 256 new tokens, top-k 50, bf16. Each side runs in its own process, alternating
# rounds (benchmarks/vs_nanochat.py). nanochat's FA3 kernel comes from the HF hub: without hub access its
# loader falls back to SDPA (as rlkit uses), which the output of its child then says nothing about, so
# this compares SDPA with SDPA.
#
#   benchmarks/gpu_real_size.sh                    # rlkit only
#   benchmarks/gpu_real_size.sh /path/to/nanochat  # both sides, with rlkit / nanochat ratios
#
# Budget: about 8-10 minutes on an H100 (four compiles of d12/d20, two rollout models).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
args=(--device cuda --depths 12 20 --seq 2048 --batch 32 --rounds 2 --steps 5 --peak-tflops 989
      --rollout-depth 20 --new-tokens 256 --only d12-bf16-compiled d20-bf16-compiled rollout-bf16)
if [ $# -ge 1 ]; then args+=(--nanochat "$1"); fi
python benchmarks/vs_nanochat.py "${args[@]}"
