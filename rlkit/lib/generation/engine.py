"""Continuous batching for chat and serving: the decode loop in a thread of its own, fed by requests.

Engine(model, stop_tokens) runs rlkit.lib.generation.loop's DecodeLoop in a background thread with a
joining scheduler (rlkit.lib.generation.scheduler): submit(Request) queues a request (a prompt and `samples`
completions of it, one Sequence a sample); at every step the loop records each row's newest token, admits
queued requests while the batch has room (`max_rows` rows), and decodes one token for every active row, a
new request's prompt prefilled once for its samples, inside that same decode step when the decoder has
step_join. A decoder without join still works: the engine then starts a batch by prefill once the last
one has ended.

Each row draws its tokens exactly as generate() does (rlkit.lib.generation.draw: the same candidates, the same
counter-based uniform u = hash(seed, t)), so a request's completions depend only on its prompt, settings
and seeds, not on what else is in the batch (up to float rounding of the logits), and equal generate()'s.

A Request collects its rows' tokens (`tokens[g]`, stop token included as in generate, and with `tools` the
calls' forced outputs among them: `rows[g].mask` says which) and ends each row
with a reason in `finish[g]` ("stop", "length", "cancelled", or "error" if the model raised); the engine
calls `request.notify()` after every change, from its thread.
Leaves out: preemption, paged KV memory, prefix caching across requests, splitting a long prompt into chunks.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.generation.draw import Sampling, row_key
from rlkit.lib.generation.loop import DecodeLoop
from rlkit.lib.generation.sampling import unwrap
from rlkit.lib.generation.scheduler import Scheduler
from rlkit.lib.generation.sequence import Sequence


@dataclass
class Request:
    prompt: list[int]
    samples: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    seeds: list[int] | None = None  # one per sample; default: drawn from torch's global RNG
    tools: object = None  # a rlkit.lib.generation.tools.Toolbox the rows may call; their outputs are in `tokens`
    notify: Callable[[], None] = lambda: None  # called from the engine's thread after each change
    tokens: list[list[int]] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    cancelled: bool = False
    cut: set[int] = field(default_factory=set)  # samples stopped by the caller (e.g. a stop string was found)
    rows: list[Sequence] = field(default_factory=list, repr=False)  # the engine's rows, one a sample

    @property
    def done(self) -> bool:
        return bool(self.finish) and all(f is not None for f in self.finish)

    def cancel(self, sample: int | None = None) -> None:
        """Stop one sample's row, or every row (None: e.g. the client went away), at the next step."""
        if sample is None:
            self.cancelled = True
        else:
            self.cut.add(sample)
        for g, seq in enumerate(self.rows):
            seq.cancelled = seq.cancelled or sample is None or sample == g


class Engine:
    """The decode loop over one model's Decoder, in a background thread; see the module docstring."""

    def __init__(self, model, stop_tokens: Collection[int], dtype: torch.dtype | None = None, max_rows: int = 64):
        self.model = unwrap(model).eval()
        self.device = next(self.model.parameters()).device
        self._weights_dtype = next(self.model.parameters()).dtype
        self.dtype = dtype or self._weights_dtype  # the compute dtype: bf16 samples from the model's bf16 copy
        self.max_rows = max_rows
        with torch.inference_mode():
            self.decoder = self.model.decoder(self.dtype)
        self.max_len = self.decoder.max_len
        self.scheduler = Scheduler(max_rows, stop_tokens, joining=hasattr(self.decoder, "join"))
        self.loop = DecodeLoop(self.decoder, self.scheduler, self.device)
        self._pending: deque[Request] = deque()  # submitted, not yet handed to the scheduler
        self._cond = threading.Condition()
        self._closed = False
        self.error: str | None = None  # set if the loop died (the model raised); requests then end as "error"
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
        sampling = Sampling(req.temperature, req.top_k)
        req.rows = [Sequence(req.prompt, row_key(seed), req.max_new_tokens, sampling, tokens=req.tokens[g],
                             cancelled=req.cancelled or g in req.cut, on_end=_finished, owner=(req, g),
                             tools=None if req.tools is None else req.tools.row())
                    for g, seed in enumerate(req.seeds)]
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

    # --- the engine's thread ------------------------------------------------------------------------

    def _loop(self):
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 -- a broken model must not leave requests waiting forever
            self.error = f"{type(e).__name__}: {e}"
            with self._cond:
                self._closed = True
            self._end_all("error")
            raise

    def _run(self):
        # a compute dtype other than the weights' runs under autocast, as generate() runs under a stage's
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != self._weights_dtype)
        with torch.inference_mode(), autocast:
            while True:
                with self._cond:
                    while not self._pending and not self.scheduler.busy and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        break
                    while self._pending:
                        self.scheduler.submit(self._pending.popleft().rows)
                changed = self.loop.step()
                for req in {id(seq.owner[0]): seq.owner[0] for seq in changed}.values():
                    req.notify()
        self._end_all("cancelled")

    def _end_all(self, reason):
        """End every row not yet ended (running, waiting or just submitted) with `reason`."""
        with self._cond:
            groups = [*self.scheduler.waiting, self.scheduler.rows, *(req.rows for req in self._pending)]
            self._pending.clear()
            self.scheduler.waiting.clear()
        reqs = {}
        for seq in (seq for group in groups for seq in group):
            seq.end(reason)
            reqs[id(seq.owner[0])] = seq.owner[0]
        for req in reqs.values():
            req.notify()


def _finished(seq: Sequence) -> None:
    req, g = seq.owner
    req.finish[g] = seq.finish
