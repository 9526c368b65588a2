"""Continuous batching for chat and serving: requests join one running decode batch and leave when done.

Engine(model, stop_tokens) runs one loop in a thread of its own. submit(Request) queues a request (a
prompt and `samples` completions of it); the loop, at every step:
1. appends each active row's newest token to its request and drops the rows that ended (a stop token,
   their max_new_tokens, or a cancel) through Decoder.keep;
2. admits queued requests while the batch has room (`max_rows` rows) and decodes one token for every
   active row (Decoder.step), each row drawn with its own request's temperature and top-k; a decoder with
   step_join prefills the first group of admitted prompts (those with the same number of samples) in that
   same forward;
3. prefills the other groups (all of them for a decoder without step_join) in a forward of their own
   (Decoder.join), each prompt once; a request's `samples` rows share its prefill. New rows come after the rows
   already decoding, with their first token drawn, so a request starts at the very next step.

Each row draws its tokens exactly as rlkit.lib.generation.sampling.generate does (the same candidates, the same
counter-based uniform u = hash(seed, t)), so a request's completions depend only on its prompt, settings
and seeds, not on what else is in the batch (up to float rounding of the logits), and equal generate()'s.
A decoder without join still works: it then serves one request at a time through prefill.

A Request collects its rows' tokens (`tokens[g]`, stop token included as in generate) and ends each row
with a reason in `finish[g]` ("stop", "length", "cancelled", or "error" if the model raised); the engine
calls `request.notify()` after every change, from its thread.

Scheduling at every decode step rather than per batch is Orca's iteration-level scheduling (Yu et al.,
OSDI 2022), the "continuous batching" of vLLM and TGI. Mixing a prefill into a decode step is Sarathi's and
vLLM's (Agrawal et al., 2023): on a CPU a forward's fixed cost (one dispatch per op per layer) is then paid
once a step, not twice. Leaves out: preemption, paged KV memory, prefix caching across requests, splitting
a long prompt into chunks.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.generation.sampling import _candidates, _choose, _row_key, _unwrap


@dataclass
class Request:
    prompt: list[int]
    samples: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    seeds: list[int] | None = None  # one per sample; default: drawn from torch's global RNG
    notify: Callable[[], None] = lambda: None  # called from the engine's thread after each change
    tokens: list[list[int]] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    cancelled: bool = False
    cut: set[int] = field(default_factory=set)  # samples stopped by the caller (e.g. a stop string was found)

    @property
    def done(self) -> bool:
        return bool(self.finish) and all(f is not None for f in self.finish)

    def cancel(self, sample: int | None = None) -> None:
        """Stop one sample's row, or every row (None: e.g. the client went away), at the next step."""
        if sample is None:
            self.cancelled = True
        else:
            self.cut.add(sample)


class Engine:
    """The continuous-batching loop over one model's Decoder; see the module docstring."""

    def __init__(self, model, stop_tokens: Collection[int], dtype: torch.dtype | None = None, max_rows: int = 64):
        self.model = _unwrap(model).eval()
        self.device = next(self.model.parameters()).device
        self._weights_dtype = next(self.model.parameters()).dtype
        self.dtype = dtype or self._weights_dtype  # the compute dtype: bf16 samples from the model's bf16 copy
        self._stops = set(stop_tokens)
        self.max_rows = max_rows
        with torch.inference_mode():
            self.decoder = self.model.decoder(self.dtype)
        self.max_len = self.decoder.max_len
        self._pending: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.error: str | None = None  # set if the loop died (the model raised); requests then end as "error"
        self._rows: list[tuple[Request, int]] = []  # (request, sample) of each active row
        self._thread = threading.Thread(target=self._loop, name="rlkit-engine", daemon=True)
        self._thread.start()

    def submit(self, req: Request) -> Request:
        """Queue `req` (checked here: bad settings raise RlkitError) and return it."""
        if not req.prompt or not 1 <= req.samples <= self.max_rows or req.max_new_tokens < 1 \
                or req.temperature < 0 or (req.top_k is not None and req.top_k < 1):
            raise RlkitError(f"engine: prompt of {len(req.prompt)} tokens, samples={req.samples}, max_new_tokens="
                             f"{req.max_new_tokens}, temperature={req.temperature}, top_k={req.top_k}; valid: a "
                             f"non-empty prompt, 1 <= samples <= {self.max_rows}, max_new_tokens >= 1, "
                             "temperature >= 0, top_k None or >= 1")
        if len(req.prompt) + req.max_new_tokens > self.max_len:
            raise RlkitError(f"prompt ({len(req.prompt)} tokens) + max_new_tokens ({req.max_new_tokens}) exceeds "
                             f"the model's {self.max_len} positions")
        if req.seeds is None:
            base = int(torch.randint(0, 2**62, ()).item())
            req.seeds = [base + g for g in range(req.samples)]
        if len(req.seeds) != req.samples:
            raise RlkitError(f"engine: {len(req.seeds)} seeds for {req.samples} samples; give one seed a sample")
        req.tokens, req.finish = [[] for _ in range(req.samples)], [None] * req.samples
        with self._cond:
            if self._closed:
                raise RlkitError(f"engine: closed{f' after an error ({self.error})' if self.error else ''}")
            self._pending.append(req)
            self._cond.notify()
        return req

    def close(self) -> None:
        """Stop the loop; queued and running requests end as "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # --- the loop (engine thread) -------------------------------------------------------------------

    def _loop(self):
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 -- a broken model must not leave requests waiting forever
            self.error = f"{type(e).__name__}: {e}"
            with self._cond:
                self._closed = True
                reqs = {id(r): r for r, _ in self._rows} | {id(r): r for r in self._pending}
                self._pending.clear()
            for req in reqs.values():
                self._end(req, "error")
            raise

    def _run(self):
        # a compute dtype other than the weights' runs under autocast, as generate() runs under a stage's
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != self._weights_dtype)
        with torch.inference_mode(), autocast:
            tok = keys = t = torch.empty(0, dtype=torch.long, device=self.device)  # (n,) each: active rows
            while True:
                with self._cond:
                    while not self._pending and not self._rows and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        break
                    admitted = self._admit()
                tok, keys, t = self._record(tok, keys, t)  # 1. every row's newest token; drop ended rows
                groups = self._groups(admitted)
                if self._rows:  # 2. one decode step for every active row (with a group's prefill if it mixes)
                    mixed = groups.pop(0) if groups and hasattr(self.decoder, "step_join") else None
                    n, t = len(self._rows), t + 1
                    logits = self.decoder.step(tok) if mixed is None else self._join(mixed, tok)  # (n [+ P], V)
                    tok = self._draw(logits[:n], keys, t, self._rows)
                    if mixed:
                        tok, keys, t = self._add(mixed, logits[n:], tok, keys, t)
                for group in groups:  # 3. join: one prefill a group, then each sample's first token
                    tok, keys, t = self._add(group, self._join(group), tok, keys, t)
            for req in {id(r): r for r, _ in self._rows}.values():
                self._end(req, "cancelled")
            while self._pending:
                self._end(self._pending.popleft(), "cancelled")

    def _admit(self) -> list[Request]:
        joins = hasattr(self.decoder, "join")
        if not joins and self._rows:
            return []  # a decoder without join: one request at a time
        room, admitted = self.max_rows - len(self._rows), []
        while self._pending and self._pending[0].samples <= room:
            req = self._pending.popleft()
            if req.cancelled:
                self._end(req, "cancelled")
                continue
            admitted.append(req)
            room -= req.samples
            if not joins:
                break
        return admitted

    def _groups(self, admitted):
        """Admitted requests in joins: those with the same number of samples prefill together."""
        if not hasattr(self.decoder, "join"):
            return [[req] for req in admitted]
        by_samples = {}
        for req in admitted:
            by_samples.setdefault(req.samples, []).append(req)
        return list(by_samples.values())

    def _add(self, group, first, tok, keys, t):
        """Append the group's rows after the active ones, each with its first token drawn from its prompt's
        logits `first` (P, V) -> (tok, keys, t) of all rows."""
        G = group[0].samples
        owners = [(req, g) for req in group for g in range(G)]
        new_keys = torch.tensor([_row_key(req.seeds[g]) for req, g in owners], dtype=torch.long,
                                device=self.device)  # (P * G,)
        new_t = torch.zeros_like(new_keys)
        first = first.repeat_interleave(G, dim=0)  # (P * G, V): a prompt's samples share its logits
        tok = torch.cat([tok, self._draw(first, new_keys, new_t, owners)])
        self._rows += owners
        return tok, torch.cat([keys, new_keys]), torch.cat([t, new_t])

    def _join(self, group, tokens=None):
        """Prefill the group's prompts together (right-padded) -> logits (P, V) of each one's first token;
        with `tokens` (n,), in the same forward as the active rows' decode step -> logits (n + P, V)."""
        lens = torch.tensor([len(req.prompt) for req in group], device=self.device)  # (P,)
        idx = torch.zeros(len(group), int(lens.max()), dtype=torch.long)  # (P, Tp)
        for p, req in enumerate(group):
            idx[p, :len(req.prompt)] = torch.tensor(req.prompt)
        idx, G, max_new = idx.to(self.device), group[0].samples, max(req.max_new_tokens for req in group)
        if tokens is not None:
            return self.decoder.step_join(tokens, idx, lens, G, max_new)
        if hasattr(self.decoder, "join"):
            return self.decoder.join(idx, lens, G, max_new)
        return self.decoder.prefill(idx, lens, G, max_new)

    def _record(self, tok, keys, t):
        """Append each active row's newest token to its request, end rows (stop token, length, cancel), tell
        the requests, and keep only the rows still running -> (tok, keys, t) of those rows."""
        keep, changed = [], {}
        for i, ((req, g), token) in enumerate(zip(self._rows, tok.tolist())):
            if req.cancelled or g in req.cut:
                req.finish[g] = "cancelled"
            else:
                req.tokens[g].append(token)
                req.finish[g] = "stop" if token in self._stops else \
                    "length" if len(req.tokens[g]) >= req.max_new_tokens else None
            if req.finish[g] is None:
                keep.append(i)
            changed[id(req)] = req
        for req in changed.values():
            req.notify()
        if len(keep) < len(self._rows):
            rows = torch.tensor(_fill_holes(keep), dtype=torch.long, device=self.device)
            self._rows = [self._rows[i] for i in rows.tolist()]
            tok, keys, t = tok[rows], keys[rows], t[rows]
            self.decoder.keep(rows)  # also when none is left: the next join starts from an empty batch
        return tok, keys, t

    def _draw(self, logits, keys, t, owners):
        """logits (n, V) -> tokens (n,): each row by its request's temperature and top-k, as generate() draws."""
        settings = [(req.temperature, req.top_k) for req, _ in owners]
        groups = set(settings)
        if len(groups) == 1:  # the usual case: no indexing
            return self._draw_rows(logits, keys, t, *groups.pop())
        out = torch.empty(len(owners), dtype=torch.long, device=self.device)
        for temperature, top_k in groups:
            rows = torch.tensor([i for i, s in enumerate(settings) if s == (temperature, top_k)], device=self.device)
            out[rows] = self._draw_rows(logits[rows], keys[rows], t[rows], temperature, top_k)
        return out

    def _draw_rows(self, logits, keys, t, temperature, top_k):
        if temperature == 0:
            return logits.argmax(dim=-1)
        values, ids = _candidates(logits, top_k)
        return _choose(values, ids, keys, t, temperature, self.decoder.logit_softcap)

    @staticmethod
    def _end(req, reason):
        req.finish = [reason if f is None else f for f in req.finish]
        req.notify()


def _fill_holes(keep: list[int]) -> list[int]:
    """The order of the m kept rows (ascending indices) in which the rows already among the first m stay
    where they are and the ones further back fill the holes, so a decoder's keep moves only those."""
    m = len(keep)
    order, movers = list(range(m)), [i for i in keep if i >= m]
    holes = sorted(set(range(m)) - set(keep))
    for hole, row in zip(holes, movers):
        order[hole] = row
    return order
