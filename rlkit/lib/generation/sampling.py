"""Batched sampling with a KV cache: the same code makes RL rollouts and evaluation completions.

generate(model, prompts, samples, ...) returns `samples` completions of every prompt (rows prompt-major:
row p * samples + g), working through the prompts in chunks of at most `batch_rows` rows. The model plugin
does the forward passes through its Decoder (rlkit.core.policy), over a KV cache it owns:
1. Prefill: the chunk's P prompts, right-padded to the longest, go through the model once, together; each
   prompt's last real position gives the logits of its first new token, and its G samples share the
   prompt's cache (rlkit's GPT keeps each prompt's keys/values once and reads them once per prompt).
2. Decode: one token per row per step, all rows together. A row ends at its first stop token (kept in
   its completion); once an eighth of the batch has ended, the decoder is told to keep only the rows still
   running. The loop ends when every row has ended or max_new_tokens were drawn.

Sampling: temperature 0 is argmax. Otherwise only the top_k largest logits are kept (all of them when top_k
is None) and a token is drawn from softmax(softcap(logit) / temperature) over those k values alone (the
decoder's logit_softcap; none for a model without one), by
inverse CDF over the candidates in token-id order. The uniform number is counter-based: row r's t-th token
uses u = hash(seed_r, t), so a row's completion depends only on its prompt and its seed, never on what else
is in the batch (up to float rounding of the logits), and costs one vectorised hash per step.

Entropy (`entropy=True`, for the rl stage's tracking): each row's sum, over the tokens it sampled (its
stop token included), of the entropy in nats of the distribution the model gave that token, softmax(softcap(
logits)) before temperature and top-k: what a training forward over the finished rows would give, up to the
rounding of the decoder's dtype, read off logits the decode computes anyway.

Compute dtype: under torch.autocast(bf16/fp16) on the model's device, the decoder is asked for that dtype
(rlkit's GPT then samples from an inference copy whose matmul weights are stored in it: the same numbers as
autocast, without casting every weight on every step); otherwise the model's own dtype (fp32).
Leaves out: beam search, repetition penalties, top-p, speculative decoding, CUDA graphs.
"""
from collections.abc import Collection
from dataclasses import dataclass

import torch

from rlkit.core.errors import RlkitError

_M32 = 0xFFFFFFFF


@dataclass
class Rollout:
    ids: torch.Tensor  # (N, L) long: prompt + completion, right-padded with pad_id
    mask: torch.Tensor  # (N, L) long: 1 on sampled tokens (stop token included), else 0
    completions: list[list[int]]  # sampled tokens of each row, stop token included if one was hit
    prompt_lens: list[int]  # prompt length of each row
    entropy: torch.Tensor | None = None  # (N,) float32 with entropy=True: nats summed over each row's sampled tokens


def generate(model, prompts: list[list[int]], samples: int, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, stop_tokens: Collection[int] = (), seeds: list[int] | None = None,
             pad_id: int = 0, batch_rows: int = 256, entropy: bool = False) -> Rollout:
    """Sample `samples` completions of each prompt; see the module docstring. seeds: one per row (default:
    drawn from torch's global RNG); batch_rows: most rows (prompts x samples) decoded at once. The Rollout's
    tensors are on the model's device and are ordinary tensors (usable in a training forward); entropy: also
    each row's summed next-token entropy (module docstring)."""
    model = _unwrap(model)
    _check(prompts, samples, max_new_tokens, temperature, top_k, seeds, batch_rows)
    device = next(model.parameters()).device
    if seeds is None:
        base = int(torch.randint(0, 2**62, ()).item())
        seeds = [base + r for r in range(len(prompts) * samples)]
    keys = torch.tensor([_row_key(s) for s in seeds], dtype=torch.long, device=device)  # (N,)
    dtype = next(model.parameters()).dtype
    if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) != dtype:
        dtype = torch.get_autocast_dtype(device.type)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            decoder = model.decoder(dtype)
            _check_length(decoder, prompts, max_new_tokens)
            completions, entropies = [], []
            per_chunk = max(1, batch_rows // samples)
            for start in range(0, len(prompts), per_chunk):
                chunk = prompts[start:start + per_chunk]
                chunk_keys = keys[start * samples:(start + len(chunk)) * samples]
                done, ent = _generate_chunk(decoder, chunk, samples, max_new_tokens, temperature, top_k,
                                            stop_tokens, chunk_keys, device, entropy)
                completions += done
                entropies.append(ent)
    finally:
        model.train(was_training)
    out = _rollout(prompts, samples, completions, pad_id, device)
    if entropy:
        out.entropy = torch.cat(entropies) if entropies else torch.zeros(0, device=device)
    return out


def _generate_chunk(decoder, prompts, G, max_new_tokens, temperature, top_k, stop_tokens, keys, device,
                    entropy=False):
    """Prefill P prompts once, decode P * G rows -> (list of P * G completions (prompt-major), each row's
    summed next-token entropy (P * G,) with `entropy`, else None)."""
    P, N = len(prompts), len(prompts) * G
    ent = torch.zeros(N, device=device) if entropy else None
    if max_new_tokens == 0:
        return [[] for _ in range(N)], ent
    lens = torch.tensor([len(p) for p in prompts], device=device)  # (P,)
    idx = torch.full((P, int(lens.max())), 0, dtype=torch.long)
    for p, prompt in enumerate(prompts):
        idx[p, :len(prompt)] = torch.tensor(prompt)

    def draw(logits, keys, t, expand=None):  # logits (m, V) -> tokens (n,), rows expanded by `expand`
        if temperature == 0:
            tok = logits.argmax(dim=-1)
            return tok if expand is None else tok[expand]
        values, ids = _candidates(logits, top_k)
        if expand is not None:
            values, ids = values[expand], (None if ids is None else ids[expand])
        return _choose(values, ids, keys, t, temperature, decoder.logit_softcap)

    # 1. prefill the P prompts together (the G samples of a prompt share it); each prompt's first token
    first = decoder.prefill(idx.to(device), lens, G, max_new_tokens)  # (P, V)
    # 2. decode
    rows = torch.arange(N, device=device)  # original row of each active row
    out = torch.zeros(N, max_new_tokens, dtype=torch.long, device=device)
    ends = torch.full((N,), max_new_tokens, dtype=torch.long, device=device)  # completion length per row
    stop = torch.tensor(sorted(stop_tokens), dtype=torch.long, device=device)
    alive = torch.ones(N, dtype=torch.bool, device=device)
    tok = draw(first, keys, 0, expand=rows // G)  # (N,)
    if entropy:
        ent += next_token_entropy(first, decoder.logit_softcap)[rows // G]
    for t in range(max_new_tokens):
        if t > 0:
            logits = decoder.step(tok)
            tok = draw(logits, keys, t)
            if entropy:  # rows still running sampled this token (finished ones wait to be compacted away)
                ent.index_add_(0, rows, next_token_entropy(logits, decoder.logit_softcap) * alive)
        out[rows, t] = tok
        if stop.numel() == 0:
            continue
        hit = alive & torch.isin(tok, stop)
        ends[rows[hit]] = t + 1
        alive &= ~hit
        n_alive = int(alive.sum())
        if n_alive == 0:
            break
        if alive.numel() - n_alive >= max(1, alive.numel() // 8):  # compact: finished rows stop costing work
            keep = alive.nonzero()[:, 0]
            decoder.keep(keep)
            rows, tok, keys, alive = rows[keep], tok[keep], keys[keep], alive[keep]
    out, ends = out.tolist(), ends.tolist()
    return [out[r][:ends[r]] for r in range(N)], ent


def next_token_entropy(logits, softcap=None):
    """logits (..., V) -> (...) entropy in nats of softmax(softcap(logits)), in float32."""
    z = logits.float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logq = torch.log_softmax(z, dim=-1)
    return -(logq.exp() * logq).sum(dim=-1)


def _hash32(x):
    """A 32-bit integer mixer (lowbias32) for ints or int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _row_key(seed):
    seed &= 2**64 - 1
    return _hash32((seed & _M32) ^ _hash32(seed >> 32))


def _uniform(keys, t):
    """u in (0, 1), float32, from each row's key (n,) and the step t."""
    h = _hash32(keys ^ _hash32((t + 0x9E3779B9) & _M32))
    return ((h >> 8).float() + 0.5) * 2.0**-24


def _candidates(logits, top_k):
    """logits (n, V) float32 -> (values (n, k), ids (n, k)) with ids ascending, or (logits, None) for all V."""
    if top_k is None or top_k >= logits.size(-1):
        return logits, None
    values, ids = _top_k(logits, top_k)
    ids, order = ids.sort(dim=-1)  # token-id order, so ties and topk's output order cannot matter
    return values.gather(1, order), ids


def _choose(values, ids, keys, t, temperature, softcap):
    """Draw one candidate per row by inverse CDF of softmax(softcap(values) / temperature) -> tokens (n,)."""
    z = (values if softcap is None else softcap * torch.tanh(values / softcap)) / temperature
    cdf = torch.softmax(z, dim=-1).cumsum(dim=-1)  # (n, k)
    u = _uniform(keys, t)[:, None] * cdf[:, -1:]
    j = (cdf < u).sum(dim=-1, keepdim=True).clamp_(max=values.size(-1) - 1)  # (n, 1)
    return (j if ids is None else ids.gather(1, j))[:, 0]


def _top_k(logits, k):
    """torch.topk(logits (n, V), k) as (values, ids), unsorted. On CPU, with a vocabulary of 64-wide blocks, in
    two stages (about half the time of one torch.topk there; on CUDA one torch.topk is faster): the k largest
    values lie in the k blocks with the largest maxima (each such block holds a value >= the k-th largest
    maximum, so nothing outside them can beat all k), so take those blocks, then the top k of their values."""
    n, V = logits.shape
    if logits.device.type != "cpu" or V % 64 or V < 4 * 64 * k:
        return torch.topk(logits, k, dim=-1, sorted=False)
    blocks = logits.view(n * V // 64, 64)
    best = blocks.amax(dim=-1).view(n, V // 64).topk(k, dim=-1, sorted=False).indices  # (n, k) block indices
    rows = torch.arange(n, device=logits.device)[:, None] * (V // 64)
    cand = blocks.index_select(0, (rows + best).flatten()).view(n, k * 64)  # (n, k * 64)
    values, j = cand.topk(k, dim=-1, sorted=False)
    return values, best.gather(1, j // 64) * 64 + j % 64


def _unwrap(model):
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


def _rollout(prompts, G, completions, pad_id, device):
    prompt_lens = [len(p) for p in prompts for _ in range(G)]
    N = len(completions)
    L = max((pl + len(c) for pl, c in zip(prompt_lens, completions)), default=0)
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    mask = torch.zeros(N, L, dtype=torch.long)
    for r, comp in enumerate(completions):
        pl = prompt_lens[r]
        ids[r, :pl] = torch.tensor(prompts[r // G])
        ids[r, pl:pl + len(comp)] = torch.tensor(comp, dtype=torch.long)
        mask[r, pl:pl + len(comp)] = 1
    return Rollout(ids.to(device), mask.to(device), completions, prompt_lens)
