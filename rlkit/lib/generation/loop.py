"""The decode loop: the one place where rlkit generates tokens, for RL rollouts, evaluation, chat and serving.

DecodeLoop.step() runs one iteration over the model plugin's Decoder (rlkit.core.policy) and a Scheduler
(rlkit.lib.generation.scheduler), which holds the rows (rlkit.lib.generation.sequence):
1. the scheduler records each row's newest token (a forced one replaces the draw; rows end);
2. ended rows leave through decoder.keep when it says so, and it admits waiting groups;
3. one decode step for every row of the batch (decoder.step) draws each row's next token
   (rlkit.lib.generation.draw, with the row's own sampling settings and counter). With a joining scheduler
   and a decoder that has step_join, the first admitted group's prompts are prefilled in that same forward
   (Sarathi's and vLLM's mixing of prefill and decode, Agrawal et al. 2023: a forward's fixed cost is then
   paid once a step, not twice);
4. the other admitted groups are prefilled (decoder.prefill to start a batch, decoder.join to add to a
   running one), each prompt once for all its samples, and their first tokens drawn: a new row starts
   decoding at the next step.
run() steps until every row has ended: generate() calls it in the caller's thread; the Engine calls step()
in a thread of its own while requests keep arriving.

Entropy (entropy=True): each row's sum, over the tokens it sampled (not the forced ones), of the entropy of
the distribution the model gave that token, next_token_entropy of the decode's own logits.

Log-probabilities (logprobs=True): each drawn token's pair (log-probability under the distribution it was
drawn from, the model's untempered full-vocabulary log-probability; rlkit.lib.generation.draw), appended to
its row's `logprobs` at the draw, from the logits the decode already has (the full log softmax is shared with
the entropy's). A row's pairs line up with its tokens (a forced token keeps the pair of the draw it replaced).

Tools and environments plug in at the row. A row's `resume` (called at its stop token: an environment's
turn) returns tokens that the loop feeds into it, one a step, with mask 0, in place of its draws, while the
other rows go on decoding; Sequence.force queues such tokens from anywhere in the engine's thread. A row
with `tools` (rlkit.lib.generation.tools) that samples the call-end token hands its call to a thread pool
and is fed the output opener while the call runs; the call's output follows in the same forced queue, so a
row's draws go on from t = len(tokens) after it, whatever else is in the batch. Not built: parking a row
whose call is slow (leave the batch, rejoin through join with prompt + tokens, as prompts() below allows);
today the step after the call waits for it, up to the call's timeout. An episode's row (`env`,
rlkit.lib.generation.episodes) is the same: at its stop token the env's step runs in that pool while the token is
fed, and its reply's tokens are forced at the next step; no second loop.
"""
from __future__ import annotations

import torch

from rlkit.lib.generation.draw import draw, entropy_of, model_log_softmax
from rlkit.lib.generation.scheduler import Scheduler
from rlkit.lib.generation.sequence import Sequence, State


class DecodeLoop:
    def __init__(self, decoder, scheduler: Scheduler, device: torch.device, entropy: bool = False,
                 logprobs: bool = False):
        self.decoder, self.scheduler, self.device, self.entropy = decoder, scheduler, device, entropy
        self.logprobs = logprobs
        self.softcap = decoder.logit_softcap
        self.mixes = scheduler.joining and hasattr(decoder, "step_join")
        none = torch.empty(0, dtype=torch.long, device=device)
        self.tok, self.keys, self.t = none, none, none  # (n,) each, for the n rows of the batch
        self.ent = self.live = torch.empty(0, device=device)  # (n,) float32: entropy so far; 1 if the row samples
        self.kinds = []  # [(Sampling, rows (n_k,) or None for all)]: the batch's sampling settings

    def run(self) -> None:
        while self.scheduler.busy:
            self.step()

    def step(self) -> list[Sequence]:
        """One iteration (module docstring) -> the rows that took a token or ended."""
        s = self.scheduler
        changed, forced, events = s.record(self.tok.tolist())
        if forced:  # the decoder is fed the forced token instead of the draw
            rows, tokens = zip(*forced)
            self.tok[torch.tensor(rows, device=self.device)] = torch.tensor(tokens, device=self.device)
        if self.entropy and events:  # rows that ended, or whose next token is forced, stop adding entropy
            samples = [float(s.rows[i].samples_next) for i in events]
            self.live[torch.tensor(events, device=self.device)] = torch.tensor(samples, device=self.device)
        order = s.compaction()
        if order is not None:
            self._compact(order)
        groups = by_samples(s.admit(changed))
        if s.rows:
            n = len(s.rows)
            mixed = groups.pop(0) if groups and self.mixes else None
            logits = self.decoder.step(self.tok) if mixed is None else \
                self.decoder.step_join(self.tok, *prompts(mixed, self.device))  # (n [+ P], V)
            self.t += 1
            logq = model_log_softmax(logits[:n], self.softcap) if self.entropy or self.logprobs else None
            if self.entropy:  # the rows that sample their next token from these logits
                self.ent += entropy_of(logq) * self.live
            self.tok = self._draw(logits[:n], logq)
            if mixed:
                self._start(mixed, logits[n:])
        for group in groups:
            idx, lens, G, max_new = prompts(group, self.device)
            first = (self.decoder.join if s.joining else self.decoder.prefill)(idx, lens, G, max_new)
            self._start(group, first)
        return changed

    def _draw(self, logits, logq=None):
        """logits (n, V) -> each row's next token, by its own sampling settings (logq: their log softmax)."""
        if not self.logprobs:
            return draw_rows(logits, self.keys, self.t, self.kinds, self.softcap)
        tok, lp = draw_rows(logits, self.keys, self.t, self.kinds, self.softcap, logp=True)
        note_logprobs(self.scheduler.rows, tok, lp, logq)
        return tok

    def _start(self, batch: tuple[int, list[Sequence]], first):
        """Append a prefill's rows (G a prompt) to the batch, each with its first token drawn from its
        prompt's logits `first` (P, V)."""
        G, rows = batch
        expand = torch.arange(len(rows), device=self.device) // G  # the prompt of each row
        keys = torch.tensor([seq.key for seq in rows], dtype=torch.long, device=self.device)
        t = torch.tensor([len(seq.tokens) for seq in rows], dtype=torch.long, device=self.device)
        kinds = kinds_of(rows, self.device)
        if len(kinds) == 1:  # the candidates once a prompt, not once a row
            tok = draw(first, keys, t, kinds[0][0], self.softcap, expand, logp=self.logprobs)
        else:
            tok = draw_rows(first[expand], keys, t, kinds, self.softcap, logp=self.logprobs)
        logq = model_log_softmax(first, self.softcap)[expand] if self.entropy or self.logprobs else None
        if self.logprobs:
            tok, lp = tok
            note_logprobs(rows, tok, lp, logq)
        self.tok, self.keys, self.t = torch.cat([self.tok, tok]), torch.cat([self.keys, keys]), torch.cat([self.t, t])
        if self.entropy:
            self.ent = torch.cat([self.ent, entropy_of(logq)])
            self.live = torch.cat([self.live, torch.ones(len(rows), device=self.device)])
        self.scheduler.started(rows)
        self.kinds = kinds_of(self.scheduler.rows, self.device)

    def _compact(self, order: list[int]):
        """Drop the ended rows: decoder.keep(order) and the same rows of every per-row tensor."""
        s = self.scheduler
        if self.entropy:  # the leaving rows' sums
            for seq, total in zip(s.rows, self.ent.tolist()):
                if seq.state is State.ENDED:
                    seq.entropy = total
        rows = torch.tensor(order, dtype=torch.long, device=self.device)
        if order or s.joining:  # an emptied prefill batch is simply dropped: the next batch starts with prefill
            self.decoder.keep(rows)
        self.tok, self.keys, self.t = self.tok[rows], self.keys[rows], self.t[rows]
        if self.entropy:
            self.ent, self.live = self.ent[rows], self.live[rows]
        s.compacted(order)
        self.kinds = kinds_of(s.rows, self.device)


def kinds_of(rows: list[Sequence], device) -> list[tuple]:
    """[(Sampling, the rows that use it (n_k,), or None when every row does)]."""
    settings = [seq.sampling for seq in rows]
    kinds = set(settings)
    if len(kinds) <= 1:
        return [(kind, None) for kind in kinds]
    return [(kind, torch.tensor([i for i, k in enumerate(settings) if k == kind], device=device)) for kind in kinds]


def draw_rows(logits, keys, t, kinds, softcap, logp=False):
    """logits (n, V) -> tokens (n,): each row drawn with the settings of its kind (kinds_of); with `logp`,
    (tokens, their log-probabilities under the distributions drawn from)."""
    if len(kinds) == 1:
        return draw(logits, keys, t, kinds[0][0], softcap, logp=logp)
    tok = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
    lp = torch.empty(logits.size(0), device=logits.device)
    for sampling, rows in kinds:
        out = draw(logits[rows], keys[rows], t[rows], sampling, softcap, logp=logp)
        tok[rows], lp[rows] = out if logp else (out, 0.0)
    return (tok, lp) if logp else tok


def note_logprobs(rows: list[Sequence], tok, lp, logq) -> None:
    """Append each live row's (sampled, model) log-probabilities of its drawn token: lp (n,) and the model's
    log softmax logq (n, V) at the token."""
    model = logq.gather(1, tok[:, None])[:, 0]
    for seq, pair in zip(rows, zip(lp.tolist(), model.tolist())):
        if seq.state is not State.ENDED:  # an ended row waiting for compaction draws for nothing
            seq.logprobs.append(pair)


def by_samples(groups: list[list[Sequence]]) -> list[tuple[int, list[Sequence]]]:
    """Admitted groups merged by their number of samples G -> [(G, rows)]: each prefills in one forward."""
    merged = {}
    for group in groups:
        merged.setdefault(len(group), []).extend(group)
    return list(merged.items())


def prompts(batch: tuple[int, list[Sequence]], device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The prefill arguments of P prompts' G rows each (prompt-major), as the Decoder takes them: (idx (P, Tp)
    right-padded, lens (P,), G, max_new). A row's prompt here is its prompt and its tokens so far."""
    G, rows = batch
    texts = [rows[p].prompt + rows[p].tokens for p in range(0, len(rows), G)]
    lens = [len(text) for text in texts]
    idx = torch.zeros(len(texts), max(lens), dtype=torch.long)  # (P, Tp)
    for p, text in enumerate(texts):
        idx[p, :lens[p]] = torch.tensor(text)
    max_new = max(seq.max_new - len(seq.tokens) for seq in rows)
    return idx.to(device), torch.tensor(lens, device=device), G, max_new
