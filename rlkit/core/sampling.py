"""Batched sampling with a KV cache: the same code makes RL rollouts and evaluation completions.

generate(model, prompts, samples, ...) returns `samples` completions of every prompt (rows prompt-major:
row p * samples + g), working through the prompts in chunks of at most `batch_rows` rows:
1. Prefill: the chunk's P prompts, right-padded to the longest, run through the model once, together, into a
   model.KVCache of P rows; each prompt's last real position gives the logits of its first new token.
2. Share: a SharedPrefixCache keeps each prompt's keys/values once for its G samples (no copies) and gives
   every sample row its own preallocated suffix of max_new_tokens slots; attention reads the prompt part
   once per prompt with a (G x Tp) matmul, not once per row.
3. Decode: one token per row per forward, all rows together. A row ends at its first stop token (kept in
   its completion); once an eighth of the batch has ended, the suffix cache and the row state are compacted
   to the rows still running. The loop ends when every row has ended or max_new_tokens were drawn.

Sampling: temperature 0 is argmax. Otherwise only the top_k largest logits are kept (all of them when top_k
is None) and a token is drawn from softmax(softcap(logit) / temperature) over those k values alone, by
inverse CDF over the candidates in token-id order. The uniform number is counter-based: row r's t-th token
uses u = hash(seed_r, t), so a row's completion depends only on its prompt and its seed, never on what else
is in the batch (up to float rounding of the logits), and costs one vectorised hash per step.

Compute dtype: under torch.autocast(bf16/fp16) on the model's device, sampling runs an inference copy of
the model whose matmul weights are stored in that dtype (the same numbers as autocast, without casting every
weight on every step), with the KV cache in that dtype; otherwise it all runs in the model's dtype (fp32).
Leaves out: beam search, repetition penalties, top-p, speculative decoding, CUDA graphs.
"""
from collections.abc import Collection
from dataclasses import dataclass

import torch

from rlkit.core.errors import RlkitError
from rlkit.core.model import KVCache

_M32 = 0xFFFFFFFF


@dataclass
class Rollout:
    ids: torch.Tensor  # (N, L) long: prompt + completion, right-padded with pad_id
    mask: torch.Tensor  # (N, L) long: 1 on sampled tokens (stop token included), else 0
    completions: list[list[int]]  # sampled tokens of each row, stop token included if one was hit
    prompt_lens: list[int]  # prompt length of each row


def generate(model, prompts: list[list[int]], samples: int, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, stop_tokens: Collection[int] = (), seeds: list[int] | None = None,
             pad_id: int = 0, batch_rows: int = 256) -> Rollout:
    """Sample `samples` completions of each prompt; see the module docstring. seeds: one per row (default:
    drawn from torch's global RNG); batch_rows: most rows (prompts x samples) decoded at once. The Rollout's
    tensors are on the model's device and are ordinary tensors (usable in a training forward)."""
    model = _unwrap(model)
    _check(model, prompts, samples, max_new_tokens, temperature, top_k, seeds, batch_rows)
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
            net = model if dtype == next(model.parameters()).dtype else model.inference_copy(dtype)
            completions = []
            per_chunk = max(1, batch_rows // samples)
            for start in range(0, len(prompts), per_chunk):
                chunk = prompts[start:start + per_chunk]
                chunk_keys = keys[start * samples:(start + len(chunk)) * samples]
                completions += _generate_chunk(net, chunk, samples, max_new_tokens, temperature, top_k,
                                               stop_tokens, chunk_keys, dtype, device)
    finally:
        model.train(was_training)
    return _rollout(prompts, samples, completions, pad_id, device)


def _generate_chunk(net, prompts, G, max_new_tokens, temperature, top_k, stop_tokens, keys, dtype, device):
    """Prefill P prompts once, decode P * G rows -> list of P * G completions (prompt-major)."""
    cfg = net.config
    P, N = len(prompts), len(prompts) * G
    if max_new_tokens == 0:
        return [[] for _ in range(N)]
    lens = torch.tensor([len(p) for p in prompts], device=device)  # (P,)
    Tp = int(lens.max())
    idx = torch.full((P, Tp), 0, dtype=torch.long)
    for p, prompt in enumerate(prompts):
        idx[p, :len(prompt)] = torch.tensor(prompt)
    weight = net.lm_head.weight[:cfg.vocab_size]  # (V, C): the padded vocabulary rows are never sampled
    logits_lo = torch.empty(N, cfg.vocab_size, dtype=weight.dtype, device=device)  # reused every step
    logits32 = torch.empty(N, cfg.vocab_size, dtype=torch.float32, device=device)

    def next_logits(h):  # h (n, C) -> raw logits (n, V) float32, before the softcap, in reused buffers
        n = h.size(0)
        with torch.autocast(device.type, enabled=False):
            if weight.dtype == torch.float32:
                return torch.mm(h.float(), weight.t(), out=logits32[:n])
            torch.mm(h.to(weight.dtype), weight.t(), out=logits_lo[:n])
            return logits32[:n].copy_(logits_lo[:n])

    def draw(logits, keys, t, expand=None):  # logits (m, V) -> tokens (n,), rows expanded by `expand`
        if temperature == 0:
            tok = logits.argmax(dim=-1)
            return tok if expand is None else tok[expand]
        values, ids = _candidates(logits, top_k)
        if expand is not None:
            values, ids = values[expand], (None if ids is None else ids[expand])
        return _choose(values, ids, keys, t, temperature, cfg.softcap)

    # 1. prefill the P prompts together; each prompt's last real position gives its first token
    pre = KVCache(cfg, P, Tp, dtype, device)
    h = net.trunk(idx.to(device), kv_cache=pre)  # (P, Tp, C)
    first = next_logits(h[torch.arange(P, device=device), lens - 1])  # (P, V)
    # 2. the G samples of a prompt share its prefilled keys and values
    cache = SharedPrefixCache(pre, lens, G, max_new_tokens, dtype)
    del pre, h
    # 3. decode
    rows = torch.arange(N, device=device)  # original row of each active row
    out = torch.zeros(N, max_new_tokens, dtype=torch.long, device=device)
    ends = torch.full((N,), max_new_tokens, dtype=torch.long, device=device)  # completion length per row
    stop = torch.tensor(sorted(stop_tokens), dtype=torch.long, device=device)
    alive = torch.ones(N, dtype=torch.bool, device=device)
    tok = draw(first, keys, 0, expand=rows // G)  # (N,)
    for t in range(max_new_tokens):
        if t > 0:
            h = net.trunk(tok[:, None], kv_cache=cache)  # (n, 1, C)
            tok = draw(next_logits(h[:, 0]), keys, t)
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
            cache.keep(keep)
            rows, tok, keys, alive = rows[keep], tok[keep], keys[keep], alive[keep]
    out, ends = out.tolist(), ends.tolist()
    return [out[r][:ends[r]] for r in range(N)]


class SharedPrefixCache:
    """Decode-time KV cache for G samples of each of P prompts: each prompt's keys/values are stored once.

    prefix k/v: (n_layer, P, H, Tp, D) from the prefill, prompt p's padding masked; suffix k/v: (n_layer, N, H,
    max_new, D), one row per sample, all rows in step (t tokens each). A row's query is scored against its
    prompt's prefix (one (G, D) x (D, Tp) matmul per prompt and head, so the prefix is read once per prompt,
    not G times) and against its own suffix; one softmax runs over both. GPT.forward drives it through
    begin / attend / end, like model.KVCache; keep(rows) compacts the rows.
    """

    def __init__(self, prefill, lens, G, max_new, dtype):
        L, P, Tp, H, D = prefill.k.shape
        self.P, self.G, self.Tp = P, G, Tp
        self.pk = prefill.k.transpose(2, 3).contiguous()  # (L, P, H, Tp, D)
        self.pv = prefill.v.transpose(2, 3).contiguous()
        self.k = torch.zeros(L, P * G, H, max_new, D, dtype=dtype, device=lens.device)
        self.v = torch.zeros_like(self.k)
        self.rows = torch.arange(P * G, device=lens.device)  # original row (p * G + g) of each active row
        self.pos = lens.repeat_interleave(G)  # (n,): rotary position of each row's next token
        pad = torch.arange(Tp, device=lens.device) >= lens[:, None]  # (P, Tp): True on prompt padding
        self.pad = pad.repeat_interleave(G, dim=0)[:, None]  # (n, 1, Tp)
        self.t = 0
        self.scale = D**-0.5

    def begin(self, T):
        assert T == 1, "SharedPrefixCache decodes one token per row per forward"
        return self.pos[:, None]  # (n, 1)

    def attend(self, layer, q, k, v):
        """q, k, v (n, 1, H, D) -> (n, H, 1, D), like F.scaled_dot_product_attention's output."""
        n, _, H, D = q.shape
        P, G, Tp, t = self.P, self.G, self.Tp, self.t
        self.k[layer, :n, :, t] = k[:, 0]
        self.v[layer, :n, :, t] = v[:, 0]
        q = q[:, 0]  # (n, H, D)
        grid = q.new_zeros(P * G, H, D)
        grid[self.rows] = q  # queries by prompt: (P, G) slots, finished rows left zero
        s_pre = grid.view(P, G, H, D).transpose(1, 2) @ self.pk[layer].transpose(-1, -2)  # (P, H, G, Tp)
        s_pre = s_pre.transpose(1, 2).reshape(P * G, H, Tp)[self.rows]  # (n, H, Tp)
        # CPU matmuls copy a strided slice of the suffix first, so on CPU score all max_new slots (contiguous)
        # and mask the unwritten ones; elsewhere read just the t + 1 written slots
        S = self.k.size(3) if q.device.type == "cpu" else t + 1
        s_suf = q[:, :, None] @ self.k[layer, :n, :, :S].transpose(-1, -2)  # (n, H, 1, S)
        s_suf = s_suf[:, :, 0].float()
        if S > t + 1:
            s_suf[..., t + 1:] = float("-inf")
        s = torch.cat([s_pre.float().masked_fill_(self.pad, float("-inf")), s_suf], dim=-1)
        p = torch.softmax(s * self.scale, dim=-1).to(q.dtype)  # (n, H, Tp + S)
        p_grid = p.new_zeros(P * G, H, Tp)
        p_grid[self.rows] = p[..., :Tp]
        y_pre = p_grid.view(P, G, H, Tp).transpose(1, 2) @ self.pv[layer]  # (P, H, G, D)
        y_pre = y_pre.transpose(1, 2).reshape(P * G, H, D)[self.rows]  # (n, H, D)
        y_suf = p[:, :, None, Tp:] @ self.v[layer, :n, :, :S]  # (n, H, 1, D)
        return y_pre[:, :, None] + y_suf

    def end(self, T):
        self.pos += T
        self.t += T

    def keep(self, rows):
        """Keep only active rows `rows` (LongTensor of indices into the active rows), in that order."""
        n, t = rows.numel(), self.t
        self.k[:, :n, :, :t] = self.k[:, rows, :, :t]
        self.v[:, :n, :, :t] = self.v[:, rows, :, :t]
        self.rows, self.pos, self.pad = self.rows[rows], self.pos[rows], self.pad[rows]


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
    z = softcap * torch.tanh(values / softcap) / temperature
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


def _check(model, prompts, samples, max_new_tokens, temperature, top_k, seeds, batch_rows):
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
    longest = max((len(p) for p in prompts), default=0)
    if any(len(p) == 0 for p in prompts):
        raise RlkitError("generate: a prompt is empty; every prompt needs at least one token (e.g. <|bos|>)")
    if longest + max_new_tokens > model.cos.size(0):
        raise RlkitError(f"generate: prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{model.cos.size(0)} rotary positions (10 x seq_len)")


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
