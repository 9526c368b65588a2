"""rlkit's sampler over a Hugging Face causal LM: the Decoder contract (rlkit.core.policy) on a preallocated cache.

prefill(idx, lens, G, max_new): the P right-padded prompts go through the model once, together, with an
attention mask over their real tokens; each prompt's logits at its last real position start its G rows.
The cache is then repeated G times (prompt-major rows, as the sampler lays them out) into buffers of
Tp + max_new columns. step(tokens): one token per active row, written at the next cache column (shared by
all rows) at rotary position len(prompt) + t (per row); a row's padding columns, between its prompt and
column Tp, stay masked. The (N, Tp + max_new) padding mask is built once; a step passes the view of its
filled columns, so nothing grows by concatenation. keep(rows): the cache, mask and positions of those rows.
Logits come back float32, copied into a buffer reused every step (a fresh .float() of (N, V) costs 8x
more on CPU: page faults); the model applies any soft cap of its own, so logit_softcap is None.

The cache is hf_cache.RowCache (keys written in place, attention over the filled columns only: the idea of
transformers' StaticCache and of vLLM's / nanochat's preallocated caches) for models whose layers are all
full attention. With attn_implementation sdpa, a decode step runs hf_cache.row_attention: the (n, 1, 1, T)
padding mask goes in as it is (transformers builds no mask), and on CPU the keys are kept in float32 even
when the model computes in bf16 (CPU SDPA over bf16 keys is 3x slower). Any other layout (sliding window,
chunked, hybrid, linear) keeps transformers' DynamicCache through the same calls, with the prompts
left-padded instead: a sliding window counts cache columns, so padding inside it would hide real tokens.
"""
import contextlib
import inspect

import torch

from rlkit.plugins.models.hf_cache import ATTENTION, RowCache, uses_full_attention


class HFDecoder:
    logit_softcap = None

    def __init__(self, net, max_len: int):
        self.net, self.max_len = net, max_len
        self.in_place = uses_full_attention(net.config)
        self.row_attention = self.in_place and net.config._attn_implementation == "sdpa"
        self.cache = self.mask = self.pos = None
        # the lm_head over each prompt's last position only, where the model's forward can say so
        self.keeps_logits = "logits_to_keep" in inspect.signature(net.forward).parameters

    def prefill(self, idx, lens, samples, max_new):
        from transformers import DynamicCache

        P, Tp = idx.shape
        capacity, cols = Tp + max_new, torch.arange(Tp + max_new, device=idx.device)
        shift = torch.zeros_like(lens) if self.in_place else Tp - lens  # the fallback pads on the left (below)
        real = (cols >= shift[:, None]) & (cols < (shift + lens)[:, None]) | (cols >= Tp)  # (P, capacity)
        if self.in_place:  # on CPU with our attention: float32 keys (bf16 SDPA is 3x slower there)
            kv_dtype = torch.float32 if self.row_attention and idx.device.type == "cpu" else None
            self.cache = RowCache(self.net.config, capacity, kv_dtype)
        else:  # a sliding window counts columns: left padding keeps each row's window on its real tokens
            self.cache = DynamicCache(config=self.net.config)
            idx = idx.gather(1, (cols[:Tp] - shift[:, None]).clamp(min=0)) * real[:, :Tp]
        position, last = (cols[:Tp] - shift[:, None]).clamp(min=0), (shift + lens - 1)[:, None]  # (P, Tp), (P, 1)
        out = self.net(input_ids=idx, attention_mask=real[:, :Tp], position_ids=position, cache=self.cache,
                       use_cache=True, **({"logits_to_keep": last} if self.keeps_logits else {}))
        rows = torch.arange(P, device=idx.device)
        first = (out.logits[:, 0] if self.keeps_logits else out.logits[rows, last[:, 0]]).float()  # (P, V)
        self.cache.batch_repeat_interleave(samples)  # each prompt's keys and values for its G rows
        self.mask = real.repeat_interleave(samples, dim=0)  # (N, capacity)
        self.pos = lens.repeat_interleave(samples)  # (N,): the position of each row's next token
        self.filled = Tp
        self.logits = torch.empty(P * samples, first.size(1), device=idx.device)  # float32, reused every step
        return first

    def step(self, tokens):
        self.filled += 1
        mask = self.mask[:, :self.filled]
        attention = contextlib.nullcontext()
        if self.row_attention:  # our function takes the (n, 1, 1, T) mask as it is: transformers builds none
            attention, mask = _attention(self.net.config, ATTENTION), mask[:, None, None]
        with attention:
            out = self.net(input_ids=tokens[:, None], attention_mask=mask, position_ids=self.pos[:, None],
                           cache=self.cache, use_cache=True)
        self.pos = self.pos + 1
        logits = out.logits[:, -1]  # (n, V)
        if logits.dtype == torch.float32:
            return logits
        return self.logits[:logits.size(0)].copy_(logits)  # into a warm buffer: 8x faster than .float() here

    def keep(self, rows):
        self.cache.batch_select_indices(rows)
        self.mask, self.pos = self.mask[rows], self.pos[rows]


@contextlib.contextmanager
def _attention(config, name):
    """The model's attention function is `name` inside (transformers looks it up by config at every call)."""
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before
