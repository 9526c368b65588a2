"""The draw: one token per row from its logits, by a counter-based random number, so a row's tokens depend
only on its own logits, seed and step, never on what else is in the batch.

Temperature 0 is argmax. Otherwise the top_k largest logits are the candidates (all of them when top_k is
None), in token-id order, and a token is drawn from softmax(softcap(value) / temperature) over those k values
alone (softcap: the decoder's logit_softcap, softcap * tanh(x / softcap); None for a model without one) by
inverse CDF with the uniform u = uniform(key, t): key = row_key(seed) of the row, t the index of the token in
the row's completion. The hash is lowbias32 (Chris Wellons' integer hash prospector), one vectorised mixer a
step for all rows: the idea of counter-based generators (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011), without their rounds.

next_token_entropy gives the entropy (nats) of softmax(softcap(logits)), before temperature and top-k.

Log-probabilities of the drawn tokens (draw(..., logp=True)): log softmax(softcap(values) / temperature)
over the candidates at the drawn one, from the very z whose CDF the draw inverted, so it is the distribution
the token was drawn from (0 at temperature 0: argmax is certain). model_logp gives the other one: the
untempered full-vocabulary log softmax(softcap(logits)) at the token, the model's own log-probability, the
one a training forward computes (rlkit.lib.generation.loop reports both).
"""
from dataclasses import dataclass

import torch

M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampling:
    """How a row draws: temperature 0 is argmax; top_k None keeps every token as a candidate."""
    temperature: float = 1.0
    top_k: int | None = None


def hash32(x):
    """A 32-bit integer mixer (lowbias32) for ints or int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def row_key(seed: int) -> int:
    """A row's 32-bit key from its seed (any int; 64 bits are mixed in)."""
    seed &= 2**64 - 1
    return hash32((seed & M32) ^ hash32(seed >> 32))


def uniform(keys, t):
    """u in (0, 1), float32, from each row's key (n,) and its step t (an int, or (n,) per row)."""
    h = hash32(keys ^ hash32((t + 0x9E3779B9) & M32))
    return ((h >> 8).float() + 0.5) * 2.0**-24


def draw(logits, keys, t, sampling: Sampling, softcap=None, expand=None, logp=False):
    """logits (m, V) -> tokens (n,), one per row; `expand` (n,) says which logits row each row draws from
    (a prompt's G samples share its first logits), else n = m. With `logp`: (tokens, their log-probabilities
    (n,) float32 under the distribution drawn from)."""
    if sampling.temperature == 0:
        tok = logits.argmax(dim=-1)
        tok = tok if expand is None else tok[expand]
        return (tok, torch.zeros(tok.shape, device=tok.device)) if logp else tok
    values, ids = candidates(logits, sampling.top_k)
    if expand is not None:  # top-k once per prompt, not once per sample
        values, ids = values[expand], (None if ids is None else ids[expand])
    return choose(values, ids, keys, t, sampling.temperature, softcap, logp)


def candidates(logits, k):
    """logits (n, V) float32 -> (values (n, k), ids (n, k)) with ids ascending, or (logits, None) for all V."""
    if k is None or k >= logits.size(-1):
        return logits, None
    values, ids = top_k(logits, k)
    ids, order = ids.sort(dim=-1)  # token-id order, so ties and topk's output order cannot matter
    return values.gather(1, order), ids


def choose(values, ids, keys, t, temperature, softcap=None, logp=False):
    """Draw one candidate per row by inverse CDF of softmax(softcap(values) / temperature) -> tokens (n,);
    with `logp`, (tokens, log softmax(z) at each drawn candidate (n,)), from the same z."""
    z = (values if softcap is None else softcap * torch.tanh(values / softcap)) / temperature
    cdf = torch.softmax(z, dim=-1).cumsum(dim=-1)  # (n, k)
    u = uniform(keys, t)[:, None] * cdf[:, -1:]
    j = (cdf < u).sum(dim=-1, keepdim=True).clamp_(max=values.size(-1) - 1)  # (n, 1)
    tok = (j if ids is None else ids.gather(1, j))[:, 0]
    if not logp:
        return tok
    return tok, (z.gather(1, j)[:, 0] - torch.logsumexp(z, dim=-1)).float()


def top_k(logits, k):
    """torch.topk(logits (n, V), k) as (values, ids), unsorted. On CPU, with a vocabulary of 64-wide blocks, in
    two stages (faster than one torch.topk there, docs/performance.md; on CUDA one torch.topk is faster): the k
    largest values lie in the k blocks with the largest maxima (each such block holds a value >= the k-th
    largest maximum, so nothing outside them can beat all k), so take those blocks, then the top k of theirs."""
    n, V = logits.shape
    if logits.device.type != "cpu" or V % 64 or V < 4 * 64 * k:
        return torch.topk(logits, k, dim=-1, sorted=False)
    blocks = logits.view(n * V // 64, 64)
    best = blocks.amax(dim=-1).view(n, V // 64).topk(k, dim=-1, sorted=False).indices  # (n, k) block indices
    rows = torch.arange(n, device=logits.device)[:, None] * (V // 64)
    cand = blocks.index_select(0, (rows + best).flatten()).view(n, k * 64)  # (n, k * 64)
    values, j = cand.topk(k, dim=-1, sorted=False)
    return values, best.gather(1, j // 64) * 64 + j % 64


def next_token_entropy(logits, softcap=None):
    """logits (..., V) -> (...) entropy in nats of softmax(softcap(logits)), in float32."""
    return entropy_of(model_log_softmax(logits, softcap))


def model_log_softmax(logits, softcap=None):
    """logits (..., V) -> log softmax(softcap(logits)) (..., V) float32: the model's own, untempered, full vocabulary."""
    z = logits.float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return torch.log_softmax(z, dim=-1)


def entropy_of(logq):
    """logq (..., V) log-probabilities -> (...) entropy in nats."""
    return -(logq.exp() * logq).sum(dim=-1)
