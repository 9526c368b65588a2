"""The GPT's side of sampling: its KV caches and the Decoder that rlkit's sampler drives.

GPTDecoder.prefill(idx, lens, G, max_new) runs the P right-padded prompts through the model once,
together, into a KVCache of P rows, and returns each prompt's logits at its last real position; a
SharedPrefixCache then keeps each prompt's keys and values once for its G samples and gives every
sample row its own preallocated suffix. step(tokens) decodes one token per active row; keep(rows)
compacts the rows. Logits come back before the soft cap (the sampler caps the top-k candidates),
as float32 in buffers reused every step.

Serving (rlkit.lib.generation.engine) uses join(idx, lens, G, max_new) instead of prefill: the new prompts are
prefilled once, together, and their G rows each get a copy of their prompt's keys in a growing KVCache
of all active rows, appended after the rows already decoding; every row keeps its own position, so a
request joins the running batch at the next step and leaves through keep(rows). step_join(tokens, idx,
lens, G, max_new) does a decode step and a join in one forward (MixedBatch).

KVCache preallocates keys and values for every layer as (n_layer, B, T_max, H, D) and a per-row
position `pos` (B,). A forward with a cache writes each row's new keys at its own positions pos[b] ..
pos[b]+T-1 and lets query i of row b see keys 0 .. pos[b]+i (a boolean mask), with rotary angles taken
at those per-row positions. So prompts of different lengths are right-padded and prefilled together
(a prefill into an empty cache is plain causal attention; the padding keys are masked until
overwritten). Nothing grows by concatenation.
"""
import torch
import torch.nn.functional as F

from rlkit.core.errors import RlkitError
from rlkit.plugins.models.gpt_prefix_cache import SharedPrefixCache


class GPTDecoder:
    """rlkit.core.policy.Decoder for a GPT whose matmul weights are stored in `dtype`."""

    def __init__(self, net, dtype):
        self.net, self.dtype = net, dtype
        self.max_len = net.cos.size(0)  # rotary positions: 10 x seq_len
        self.logit_softcap = net.config.softcap
        self.weight = net.lm_head.weight[:net.config.vocab_size]  # (V, C): padded rows are never sampled
        self.cache = None
        self.live = None  # the KVCache of join()'s rows

    def prefill(self, idx, lens, samples, max_new):
        """idx (P, Tp) right-padded, lens (P,) -> raw logits (P, V) of each prompt's first new token."""
        P, Tp = idx.shape
        device, V = idx.device, self.weight.size(0)
        self.logits_lo = torch.empty(P * samples, V, dtype=self.weight.dtype, device=device)  # reused each step
        self.logits32 = torch.empty(P * samples, V, dtype=torch.float32, device=device)
        pre = KVCache(self.net.config, P, Tp, self.dtype, device)
        h = self.net.trunk(idx, kv_cache=pre)  # (P, Tp, C)
        first = self._logits(h[torch.arange(P, device=device), lens - 1])  # (P, V)
        self.cache = SharedPrefixCache(pre, lens, samples, max_new, self.dtype)  # the G samples share it
        return first

    def join(self, idx, lens, samples, max_new):
        """Add P prompts x G rows after the active rows of a batch started by join (the first join starts
        one): idx (P, Tp) right-padded, lens (P,) -> raw logits (P, V) of each prompt's first new token."""
        P, Tp = idx.shape
        pre = KVCache(self.net.config, P, Tp, self.dtype, idx.device)
        h = self.net.trunk(idx, kv_cache=pre)  # (P, Tp, C)
        self.live = _grown(self.live, self.net.config, P * samples, int(lens.max()) + max_new, self.dtype, idx.device)
        live, n = self.live, self.live.pos.numel()
        live.k[:, n:n + P * samples, :Tp] = pre.k.repeat_interleave(samples, dim=1)  # each prompt's keys, G times
        live.v[:, n:n + P * samples, :Tp] = pre.v.repeat_interleave(samples, dim=1)
        live.pos = torch.cat([live.pos, lens.repeat_interleave(samples)])
        live.length = max(live.length, int(lens.max()))
        self.cache = live
        self._buffers(live.pos.numel(), idx.device)
        return self._logits(h[torch.arange(P, device=idx.device), lens - 1])

    def step_join(self, tokens, idx, lens, samples, max_new):
        """join() and step(tokens) in one forward -> raw logits (n + P, V): the n active rows' next tokens,
        then the P prompts' first tokens; the P * G new rows come after the n rows. The n newest tokens and
        the P right-padded prompts go through the model as one sequence (1, n + P * Tp) (MixedBatch), so
        the layers' matmuls and the per-op overhead of a forward are paid once, not twice."""
        (P, Tp), n = idx.shape, tokens.numel()
        self.live = _grown(self.live, self.net.config, P * samples, int(lens.max()) + max_new, self.dtype, idx.device)
        self.cache = self.live
        mixed = MixedBatch(self.live, lens, samples)
        h = self.net.trunk(torch.cat([tokens, idx.flatten()])[None], kv_cache=mixed)[0]  # (n + P * Tp, C)
        last = n + torch.arange(P, device=idx.device) * Tp + lens - 1  # each prompt's last real token
        self._buffers(self.live.pos.numel(), idx.device)
        return self._logits(h[torch.cat([torch.arange(n, device=idx.device), last])])

    def step(self, tokens):
        """tokens (n,) -> raw logits (n, V) after each active row's newest token."""
        h = self.net.trunk(tokens[:, None], kv_cache=self.cache)  # (n, 1, C)
        return self._logits(h[:, 0])

    def keep(self, rows):
        self.cache.keep(rows)

    def _buffers(self, rows, device):
        if getattr(self, "logits32", None) is None or self.logits32.size(0) < rows:
            rows = max(rows, 2 * getattr(self, "logits32", torch.empty(0)).size(0))
            V = self.weight.size(0)
            self.logits_lo = torch.empty(rows, V, dtype=self.weight.dtype, device=device)
            self.logits32 = torch.empty(rows, V, dtype=torch.float32, device=device)

    def _logits(self, h):
        """h (n, C) -> raw logits (n, V) float32, before the softcap, in the reused buffers."""
        n = h.size(0)
        with torch.autocast(h.device.type, enabled=False):
            if self.weight.dtype == torch.float32:
                return torch.mm(h.float(), self.weight.t(), out=self.logits32[:n])
            torch.mm(h.to(self.weight.dtype), self.weight.t(), out=self.logits_lo[:n])
            return self.logits32[:n].copy_(self.logits_lo[:n])


class KVCache:
    """Preallocated keys and values for all layers, written in place by GPT.forward(..., kv_cache=cache).

    k, v: (n_layer, batch, max_len, n_head, head_dim); pos: (batch,) tokens already cached per row (the
    caller may set it, e.g. to each prompt's true length after a right-padded prefill); length: a host-side
    bound on max(pos), so attention reads only keys[:, :length + T]. GPT.forward calls begin(T), then
    attend(layer, q, k, v) in each layer, then end(T): any object with these three methods can stand in
    for this class (SharedPrefixCache below does).
    """

    def __init__(self, config, batch, max_len, dtype=torch.float32, device=None):
        shape = (config.n_layer, batch, max_len, config.n_head, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0
        self.mask = None  # (B, 1, T, length + T) bool, set once per forward by begin()

    @property
    def max_len(self):
        return self.k.size(2)

    def begin(self, T):
        """Called by GPT.forward before the layers: positions (B, T) of the T new tokens, and the mask."""
        if self.length + T > self.max_len:
            raise RlkitError(f"KV cache: {self.length + T} positions needed but the cache holds {self.max_len}")
        positions = self.pos[:, None] + torch.arange(T, device=self.pos.device)  # (B, T)
        keys = torch.arange(self.length + T, device=self.pos.device)
        self.mask = None if self.length == 0 else (keys <= positions[:, :, None])[:, None]  # (B, 1, T, Tk)
        return positions

    def attend(self, layer, q, k, v):
        """Write k, v (B, T, H, D) at each row's positions, then attend with q (B, T, H, D) -> (B, H, T, D)."""
        B, T = q.shape[:2]
        K, V = self.k[layer, :B], self.v[layer, :B]  # (B, max_len, H, D) views
        if self.length == 0:  # prefill into an empty cache: the new block is all there is
            K[:, :T] = k
            V[:, :T] = v
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        rows = torch.arange(B, device=q.device)
        if T == 1:
            K[rows, self.pos] = k[:, 0]
            V[rows, self.pos] = v[:, 0]
        else:
            where = self.pos[:, None] + torch.arange(T, device=q.device)  # (B, T)
            K[rows[:, None], where] = k
            V[rows[:, None], where] = v
        Tk = self.length + T
        return F.scaled_dot_product_attention(q.transpose(1, 2), K[:, :Tk].transpose(1, 2),
                                              V[:, :Tk].transpose(1, 2), attn_mask=self.mask)

    def end(self, T):
        """Called by GPT.forward after the layers: every row advanced by T tokens."""
        self.pos += T
        self.length += T

    def keep(self, rows):
        """Keep only rows `rows` (LongTensor of row indices), in that order (join's batches: one KVCache)."""
        m, T = rows.numel(), self.length
        moved = (rows != torch.arange(m, device=rows.device)).nonzero()[:, 0]  # copy only the rows that move
        if moved.numel():
            self.k[:, moved, :T] = self.k[:, rows[moved], :T]
            self.v[:, moved, :T] = self.v[:, rows[moved], :T]
        self.pos = self.pos[rows]
        self.length = int(self.pos.max()) if m else 0


class MixedBatch:
    """The cache of a forward over one flat sequence: n decoding rows' newest tokens, then P right-padded
    prompts of Tp tokens each (vLLM's mixing of prefill and decode in one batch, without its paging).

    In each layer the n decode tokens attend through the live KVCache (rows 0..n-1, each at its own
    position); the P prompts attend causally among themselves, and their keys are written G times to
    the new rows n .. n + P * G - 1 of the same cache. Rotary positions: each decode row's pos, then
    0 .. Tp-1 for every prompt.
    """

    def __init__(self, live, lens, samples):
        self.live, self.lens, self.G = live, lens, samples
        self.n = live.pos.numel()

    def begin(self, T):
        P = self.lens.numel()
        Tp = (T - self.n) // P
        self.live.begin(1)  # the decode rows' mask
        prompt = torch.arange(Tp, device=self.lens.device).repeat(P)
        return torch.cat([self.live.pos, prompt])[None]  # (1, T)

    def attend(self, layer, q, k, v):
        """q, k, v (1, n + P * Tp, H, D) -> (1, H, n + P * Tp, D)."""
        n, P, H, D = self.n, self.lens.numel(), q.size(2), q.size(3)
        y_dec = self.live.attend(layer, q[0, :n, None], k[0, :n, None], v[0, :n, None])  # (n, H, 1, D)
        qp, kp, vp = (x[0, n:].view(P, -1, H, D) for x in (q, k, v))  # (P, Tp, H, D)
        Tp, rows = qp.size(1), slice(n, n + P * self.G)
        self.live.k[layer, rows, :Tp] = kp.repeat_interleave(self.G, dim=0)  # each prompt's keys, G times
        self.live.v[layer, rows, :Tp] = vp.repeat_interleave(self.G, dim=0)
        y_pre = F.scaled_dot_product_attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
                                               is_causal=True)  # (P, H, Tp, D)
        return torch.cat([y_dec.transpose(0, 2), y_pre.transpose(0, 1).reshape(1, H, P * Tp, D)], dim=2)

    def end(self, T):
        self.live.end(1)
        self.live.pos = torch.cat([self.live.pos, self.lens.repeat_interleave(self.G)])
        self.live.length = max(self.live.length, int(self.lens.max()))


def _grown(cache, config, extra, need, dtype, device):
    """A KVCache with room for `extra` more rows and `need` positions a row: `cache` when it has it, else a
    bigger one (rows doubled, as in a list) holding cache's rows. Its pos has one entry per active row."""
    n = 0 if cache is None else cache.pos.numel()
    if cache is not None and n + extra <= cache.k.size(1) and need <= cache.max_len:
        return cache
    rows = max(n + extra, 2 * (0 if cache is None else cache.k.size(1)))
    T = max(need, 0 if cache is None else cache.max_len)
    bigger = KVCache(config, rows, T, dtype, device)
    if cache is not None:
        bigger.k[:, :n, :cache.length] = cache.k[:, :n, :cache.length]
        bigger.v[:, :n, :cache.length] = cache.v[:, :n, :cache.length]
        bigger.pos, bigger.length = cache.pos, cache.length
    else:
        bigger.pos = bigger.pos[:0]
    return bigger
