"""generate(): batched sampling for RL rollouts and evaluation, as one run of the generation engine.

generate(model, prompts, samples, ...) returns `samples` completions of every prompt (rows prompt-major:
row p * samples + g). It makes one Sequence a row (rlkit.lib.generation.sequence), submits a prompt's rows
as one group, and runs the decode loop (rlkit.lib.generation.loop) in the caller's thread until every row
has ended, with a scheduler that starts a batch by one prefill and admits nothing into it
(rlkit.lib.generation.scheduler):
1. Prefill: the batch's P prompts (at most `batch_rows` rows, whole prompts), right-padded to the longest, go
   through the model once, together; each prompt's last real position gives the logits of its first new
   token, and its G samples share the prompt's cache (rlkit's GPT keeps each prompt's keys/values once and
   reads them once per prompt). The next prompts start once every row of the batch has ended.
2. Decode: one token per row per step, all rows together. A row ends at its first stop token (kept in its
   completion) or at max_new_tokens; once an eighth of the batch has ended, the decoder keeps only the rows
   still running.

Each row draws with rlkit.lib.generation.draw: temperature 0 is argmax, else an inverse-CDF draw among the
top_k logits (softcapped by the decoder's logit_softcap) with the counter-based u = hash(seed_r, t), so a
row's completion depends only on its prompt and its seed, never on what else is in the batch (up to float
rounding of the logits). entropy=True: each row's summed next-token entropy (rlkit.lib.generation.loop).
logprobs=True: each sampled token's log-probability, twice (at the token's position in `ids`, 0 elsewhere):
`logprobs` under the distribution it was drawn from (temperature, top-k, softcap: what the sampler says it
did), `model_logprobs` the model's own untempered, full-vocabulary log softmax(softcap(z)). The RL loss
uses the model's log-probability at temperature 1, so a training forward must equal `model_logprobs`
(tests/test_mismatch.py, and the rl stage's mismatch/* metrics); `logprobs` is checked against the sampling
distribution recomputed from the training logits.
tools (a rlkit.lib.generation.tools.Toolbox): rows may call them; a call's output is forced into its row
with mask 0, and the Rollout's `tool_calls` / `tool_errors` / `tool_forced` count each row's calls, failed
ones and forced tokens.
envs (one rlkit.lib.generation.episodes.RowEnv a row): each row is a multi-turn episode; at its stop token the
env's step runs and its reply is forced into the row with mask 0 (that module), up to max_new_tokens in all.

Compute dtype: under torch.autocast(bf16/fp16) on the model's device, the decoder is asked for that dtype
(rlkit's GPT then samples from an inference copy whose matmul weights are stored in it: the same numbers as
autocast, without casting every weight on every step); otherwise the model's own dtype (fp32).
Leaves out: beam search, repetition penalties, top-p, speculative decoding, CUDA graphs.
"""
from collections.abc import Collection
from dataclasses import dataclass

import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.generation.draw import Sampling, next_token_entropy, row_key
from rlkit.lib.generation.loop import DecodeLoop
from rlkit.lib.generation.scheduler import Scheduler
from rlkit.lib.generation.sequence import Sequence

__all__ = ["Rollout", "generate", "next_token_entropy", "unwrap"]


@dataclass
class Rollout:
    ids: torch.Tensor  # (N, L) long: prompt + completion, right-padded with pad_id
    mask: torch.Tensor  # (N, L) long: 1 on sampled tokens (stop token included), else 0 (prompt, forced, pad)
    completions: list[list[int]]  # each row's tokens after its prompt, stop token included if one was hit
    prompt_lens: list[int]  # prompt length of each row
    entropy: torch.Tensor | None = None  # (N,) float32 with entropy=True: nats summed over each row's sampled tokens
    logprobs: torch.Tensor | None = None  # (N, L) float32 with logprobs=True: under the sampling distribution
    model_logprobs: torch.Tensor | None = None  # (N, L) float32 with logprobs=True: the model's, T=1, full vocabulary
    tool_calls: list[int] | None = None  # with tools: each row's calls
    tool_errors: list[int] | None = None  # with tools: each row's calls that returned an error text
    tool_forced: list[int] | None = None  # with tools: each row's forced tokens (mask 0 in its completion)
    episodes: list | None = None  # with envs: each row's RowEnv (rlkit.lib.generation.episodes): rewards, turns


def generate(model, prompts: list[list[int]], samples: int, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, stop_tokens: Collection[int] = (), seeds: list[int] | None = None,
             pad_id: int = 0, batch_rows: int = 256, entropy: bool = False, logprobs: bool = False,
             tools=None, envs: list | None = None) -> Rollout:
    """Sample `samples` completions of each prompt; see the module docstring. seeds: one per row (default:
    drawn from torch's global RNG); batch_rows: most rows (prompts x samples) decoded at once. The Rollout's
    tensors are on the model's device and are ordinary tensors (usable in a training forward); entropy: also
    each row's summed next-token entropy; logprobs: each sampled token's log-probabilities; tools: a Toolbox
    the rows may call (module docstring); envs: one RowEnv a row (prompt-major), making each row an episode."""
    model = unwrap(model)
    _check(prompts, samples, max_new_tokens, temperature, top_k, seeds, batch_rows)
    device = next(model.parameters()).device
    if seeds is None:
        base = int(torch.randint(0, 2**62, ()).item())
        seeds = [base + r for r in range(len(prompts) * samples)]
    sampling = Sampling(temperature, top_k)
    rows = [Sequence(prompt, row_key(seeds[p * samples + g]), max_new_tokens, sampling,
                     tools=None if tools is None else tools.row(), env=None if envs is None else envs[p * samples + g])
            for p, prompt in enumerate(prompts) for g in range(samples)]
    dtype = next(model.parameters()).dtype
    if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) != dtype:
        dtype = torch.get_autocast_dtype(device.type)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            decoder = model.decoder(dtype)
            _check_length(decoder, prompts, max_new_tokens)
            if max_new_tokens > 0:
                scheduler = Scheduler(max(1, batch_rows // samples) * samples, stop_tokens, joining=False)
                for r in range(0, len(rows), samples):
                    scheduler.submit(rows[r:r + samples])
                DecodeLoop(decoder, scheduler, device, entropy, logprobs).run()
    finally:
        model.train(was_training)
    out = _rollout(rows, pad_id, device)
    if entropy:
        out.entropy = torch.tensor([seq.entropy for seq in rows], dtype=torch.float32, device=device)
    if logprobs:
        out.logprobs, out.model_logprobs = _logprobs(rows, out.mask)
    if tools is not None:
        out.tool_calls, out.tool_errors = [seq.tools.calls for seq in rows], [seq.tools.errors for seq in rows]
        out.tool_forced = [len(seq.mask) - sum(seq.mask) for seq in rows]
    out.episodes = envs
    return out


def unwrap(model):
    """The model inside torch.compile and DDP wrappers."""
    for _ in range(2):  # torch.compile and DDP wrappers, in either order
        model = getattr(model, "_orig_mod", model)
        model = getattr(model, "module", model)
    return model


def _check(prompts, samples, max_new_tokens, temperature, top_k, seeds, batch_rows):
    n_rows = len(prompts) * samples
    if not isinstance(samples, int) or samples < 1:
        raise RlkitError(f"generate: samples={samples!r}; it must be an integer >= 1")
    if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1) or batch_rows < 1:
        raise RlkitError(f"generate: max_new_tokens={max_new_tokens}, temperature={temperature}, top_k={top_k}, "
                         f"batch_rows={batch_rows}; valid: max_new_tokens >= 0, temperature >= 0, "
                         "top_k None or >= 1, batch_rows >= 1")
    if seeds is not None and len(seeds) != n_rows:
        raise RlkitError(f"generate: {len(seeds)} seeds for {n_rows} rows ({len(prompts)} prompts x {samples} "
                         "samples); give one seed a row")
    if any(len(p) == 0 for p in prompts):
        raise RlkitError("generate: a prompt is empty; every prompt needs at least one token (e.g. <|bos|>)")


def _check_length(decoder, prompts, max_new_tokens):
    longest = max((len(p) for p in prompts), default=0)
    if longest + max_new_tokens > decoder.max_len:
        raise RlkitError(f"generate: prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{decoder.max_len} positions")


def _logprobs(rows: list[Sequence], mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampled, model) log-probabilities (N, L) at each sampled token's position in the rollout, 0 elsewhere."""
    pair = torch.zeros(2, *mask.shape)
    for r, seq in enumerate(rows):
        pl, n = len(seq.prompt), len(seq.tokens)
        if n:
            pair[:, r, pl:pl + n] = torch.tensor(seq.logprobs[:n], dtype=torch.float32).T  # extra draws: none kept
    pair = pair.to(mask.device) * (mask > 0)
    return pair[0], pair[1]


def _rollout(rows: list[Sequence], pad_id, device) -> Rollout:
    N = len(rows)
    L = max((len(seq.prompt) + len(seq.tokens) for seq in rows), default=0)
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    mask = torch.zeros(N, L, dtype=torch.long)
    for r, seq in enumerate(rows):
        pl, n = len(seq.prompt), len(seq.tokens)
        ids[r, :pl] = torch.tensor(seq.prompt)
        ids[r, pl:pl + n] = torch.tensor(seq.tokens, dtype=torch.long)
        mask[r, pl:pl + n] = torch.tensor(seq.mask, dtype=torch.long)
    return Rollout(ids.to(device), mask.to(device), [seq.tokens for seq in rows], [len(seq.prompt) for seq in rows])
