"""A transformers Cache whose keys and values are preallocated and written in place, for rlkit's HF decoder.

transformers' DynamicCache appends each step's keys by torch.cat, so every decode step copies every layer's
whole cache (a third of decode time at the RL shape). RowCache keeps, per layer, one (N, H, capacity, D)
buffer of keys and one of values (the idea of transformers' StaticCache and of vLLM's / nanochat's
preallocated KV caches), with the three operations rlkit's sampler needs:
1. prefill: the P prompts' keys and values are kept as the forward made them (P, H, Tp, D);
2. batch_repeat_interleave(G): the buffers are allocated for the P * G rows at capacity Tp + max_new, and
   each prompt's keys are copied into its G rows (one copy, no intermediate repeat);
3. update() during decoding: the n active rows (the first n of the buffer) write their new keys at the
   shared column `filled`, and attention gets views of the filled part only, [:n, :, :filled]
   (StaticCache returns the whole capacity and masks the rest, so every step would read it all);
4. batch_select_indices(rows): the kept rows move to the front of the buffers, in place, filled part only.
A decode step attends through row_attention (registered with transformers as "rlkit_rows"): SDPA of one query
token a row over those views, in the buffers' dtype (the decoder asks for float32 on CPU, where SDPA over
bf16 keys is 3x slower; autocast is off inside, else it would cast the whole cache back to bf16).
The column is shared by all rows; each row's rotary position and its padding mask are the decoder's (rows
of shorter prompts have masked padding columns between their prompt and their first new token).
Only for models whose layers all use full attention (`uses_full_attention`); sliding-window, chunked,
linear or KV-sharing layers keep transformers' DynamicCache.
"""
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin, get_layer_types_and_kwargs
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "rlkit_rows"  # the decode steps' attention function, registered with transformers below


def uses_full_attention(config) -> bool:
    """True when every layer of the model is plain full attention (what RowCache's layers implement)."""
    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return all(t == "full_attention" for t in layer_types)


def row_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One query token per row against the filled cache columns (attention_mask (n, 1, 1, T) bool, True = attend),
    in the cache's dtype: float32 on CPU, where SDPA over bf16 keys is 3x slower than over float32 ones."""
    if any(kwargs.get(k) is not None for k in ("softcap", "sliding_window", "s_aux", "sinks", "position_bias")):
        key, value = key.to(query.dtype), value.to(query.dtype)  # not plain attention: transformers' own sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    with torch.autocast(query.device.type, enabled=False):  # else autocast casts the whole cache back to bf16
        out = F.scaled_dot_product_attention(query.to(key.dtype), key, value, attn_mask=attention_mask, scale=scaling,
                                             enable_gqa=query.size(1) != key.size(1))
    return out.to(query.dtype).transpose(1, 2).contiguous(), None  # (n, 1, H, D), as transformers' sdpa returns


AttentionInterface.register(ATTENTION, row_attention)


class RowCache(Cache):
    """dtype: of the buffers (None: the keys' own)."""

    def __init__(self, config, capacity: int, dtype=None):
        n_layers = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[RowLayer(capacity, dtype) for _ in range(n_layers)])


class RowLayer(CacheLayerMixin):
    is_sliding = False

    def __init__(self, capacity: int, dtype=None):
        super().__init__()
        self.capacity, self.dtype, self.filled = capacity, dtype, 0

    def lazy_initialization(self, key_states, value_states):
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:  # the prefill: keep the prompts' keys until they are repeated
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values, self.filled = key_states, value_states, key_states.size(2)
            return key_states, value_states
        n, t, end = key_states.size(0), self.filled, self.filled + key_states.size(2)
        self.keys[:n, :, t:end] = key_states
        self.values[:n, :, t:end] = value_states
        self.filled = end
        return self.keys[:n, :, :end], self.values[:n, :, :end]

    def batch_repeat_interleave(self, repeats: int):
        self.keys, self.values = (_repeated(x, repeats, self.capacity, self.dtype or x.dtype)
                                  for x in (self.keys, self.values))

    def batch_select_indices(self, indices):
        m, t = indices.numel(), self.filled
        self.keys[:m, :, :t] = self.keys[indices, :, :t]  # the gather copies first, so overlap is safe
        self.values[:m, :, :t] = self.values[indices, :, :t]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.filled + query_length, 0

    def get_seq_length(self) -> int:
        return self.filled

    def get_max_length(self) -> int:
        return self.capacity


def _repeated(x, G, capacity, dtype):
    """(P, H, T, D) -> (P * G, H, capacity, D) in dtype, row p * G + g holding x[p] in its first T columns."""
    P, H, T, D = x.shape
    out = x.new_empty(P * G, H, capacity, D, dtype=dtype)
    out.view(P, G, H, capacity, D)[:, :, :, :T] = x[:, None]
    return out
