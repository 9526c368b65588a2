"""rlkit's sampler over a Hugging Face causal LM: the Decoder contract (rlkit.core.policy) on a DynamicCache.

prefill(idx, lens, G, max_new): the P right-padded prompts go through the model once, together, with an
attention mask over their real tokens; each prompt's logits at its last real position start its G rows,
and the cache is repeated G times (prompt-major rows, as the sampler lays them out). step(tokens): one
token per active row at position len(prompt) + t, the mask grown by one real column, so the padding
keys after a short prompt are never attended. keep(rows): the cache, mask and positions of those rows.
Logits come back float32 (the model applies any soft cap of its own, so logit_softcap is None).
"""
import torch


class HFDecoder:
    logit_softcap = None

    def __init__(self, net, max_len: int):
        self.net, self.max_len = net, max_len
        self.cache = self.mask = self.pos = None

    def prefill(self, idx, lens, samples, max_new):
        from transformers import DynamicCache

        P, Tp = idx.shape
        mask = (torch.arange(Tp, device=idx.device) < lens[:, None]).long()  # (P, Tp): 1 on real tokens
        self.cache = DynamicCache(config=self.net.config)
        out = self.net(input_ids=idx, attention_mask=mask, cache=self.cache, use_cache=True)
        first = out.logits[torch.arange(P, device=idx.device), lens - 1].float()  # (P, V)
        self.cache.batch_repeat_interleave(samples)  # each prompt's keys and values for its G rows
        self.mask = mask.repeat_interleave(samples, dim=0)  # (N, Tp)
        self.pos = lens.repeat_interleave(samples)  # (N,): the position of each row's next token
        return first

    def step(self, tokens):
        n = tokens.size(0)
        self.mask = torch.cat([self.mask, self.mask.new_ones(n, 1)], dim=1)
        out = self.net(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.pos[:, None],
                       cache=self.cache, use_cache=True)
        self.pos = self.pos + 1
        return out.logits[:, -1].float()  # (n, V)

    def keep(self, rows):
        self.cache.batch_select_indices(rows)
        self.mask, self.pos = self.mask[rows], self.pos[rows]
