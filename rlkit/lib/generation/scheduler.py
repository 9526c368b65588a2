"""The scheduler: which rows join the decode batch, what each row's newest token does, and when ended rows
leave. It keeps only Python state (the sequences); rlkit.lib.generation.loop does the forwards and draws.

Rows arrive in groups: a prompt's `samples` rows, which share its prefill. Each step:
1. record: every running row takes its newest token (the next forced one if it has any queued, else the one
   drawn), and ends at a stop token ("stop"; a row with `resume` may instead get forced tokens and go on),
   at its max_new tokens ("length") or when cancelled; a row with `tools` starts a call at its call-end
   token and gets the call's output forced next (rlkit.lib.generation.tools); a row with an `env` (an episode)
   starts the env's step at its stop token and, at the next step, ends or gets the env's reply forced
   (rlkit.lib.generation.episodes);
2. compact: decoder.keep drops the ended rows, in the order that moves fewest rows (fill_holes). In a
   prefilled batch (generate()) they first wait, each a wasted row a step, until an eighth of the batch
   has ended, since that keep copies every row's cache; in a joining batch (the Engine) they leave at once,
   to make room for waiting rows and because its rows have different KV room left;
3. admit: waiting groups, first come first served, while the batch has room for all of a group's rows.
   With `joining` (the engine: decoder.join), groups join a running batch at any step; without it
   (generate(), or a decoder without join) a batch starts with one prefill of the groups that fit and
   share a sample count, and the next batch starts once every row of this one has ended.

Iteration-level scheduling is Orca's (Yu et al., OSDI 2022), the continuous batching of vLLM and TGI.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Collection

from rlkit.lib.generation.sequence import Sequence, State


class Scheduler:
    def __init__(self, max_rows: int, stop_tokens: Collection[int], joining: bool):
        self.max_rows, self.stops, self.joining = max_rows, frozenset(stop_tokens), joining
        self.waiting: deque[list[Sequence]] = deque()  # groups: one prompt's rows each
        self.rows: list[Sequence] = []  # the decode batch, in the decoder's row order
        self.ended = 0  # rows of the batch that ended and wait for compaction

    def submit(self, group: list[Sequence]) -> None:
        self.waiting.append(group)

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or self.ended < len(self.rows)

    def record(self, tokens: list[int]) -> tuple[list[Sequence], list[tuple[int, int]], list[int]]:
        """tokens: each row's newest token (drawn) -> (the rows that took a token or ended, [(row, forced token)]
        for the rows that took a forced token instead of the drawn one, the rows that ended or took or got
        forced tokens: the ones whose next token may no longer be a draw)."""
        changed, forced, events, stops = [], [], [], self.stops
        for i, (seq, token) in enumerate(zip(self.rows, tokens)):
            if seq.state is not State.RUNNING:
                continue
            changed.append(seq)
            if seq.cancelled:
                self._end(seq, "cancelled")
                events.append(i)
                continue
            if seq.env is not None and seq.env.pending is not None:  # the env's step, started a step ago
                reply = seq.env.reply(seq)  # waits for it; None: the episode is over
                if not reply or len(seq.tokens) >= seq.max_new:
                    self._end(seq, "stop")  # the draw made while the stop token was fed is dropped
                    events.append(i)
                    continue
                seq.force(reply)
            sampled = not seq.forced
            if not sampled:  # a tool's output or an env's reply: fed in place of the draw, never trained on
                token = seq.forced.popleft()
                forced.append((i, token))
                events.append(i)
            seq.tokens.append(token)
            seq.mask.append(int(sampled))
            if sampled and token in stops and seq.env is not None:  # an episode's turn ends: the env's step
                seq.env.start(seq)  # runs off this thread while the token is fed; its reply comes next step
                events.append(i)
            elif sampled and token in stops and not self._resumed(seq):
                self._end(seq, "stop")
                events.append(i)
            elif len(seq.tokens) >= seq.max_new:
                self._end(seq, "length")
                events.append(i)
            else:
                if seq.tools is not None:  # a call starts at its end token; a finished one's output is forced
                    seq.tools.advance(seq, token, sampled)
                if seq.forced and sampled:
                    events.append(i)  # resumed or calling: forced tokens come next
        return changed, forced, events

    def _resumed(self, seq: Sequence) -> bool:
        """A stop token: the row's `resume` (an environment's turn, a tool) may force tokens and go on."""
        more = seq.resume(seq) if seq.resume is not None and len(seq.tokens) < seq.max_new else None
        if more:
            seq.force(more)
        return bool(more)

    def _end(self, seq: Sequence, reason: str) -> None:
        seq.end(reason)
        self.ended += 1

    def compaction(self) -> list[int] | None:
        """The rows to keep, in the order decoder.keep takes, if ended rows should leave now; else None."""
        if self.ended < (1 if self.joining else max(1, len(self.rows) // 8)):
            return None
        keep = [i for i, seq in enumerate(self.rows) if seq.state is State.RUNNING]
        return fill_holes(keep)

    def compacted(self, order: list[int]) -> None:
        self.rows = [self.rows[i] for i in order]
        self.ended = 0

    def admit(self, changed: list[Sequence]) -> list[list[Sequence]]:
        """Waiting groups that start now (the loop appends their rows to the batch); a group cancelled while
        it waited ends here, and its rows are added to `changed`."""
        running = len(self.rows) - self.ended
        if running and not self.joining:
            return []  # a prefilled batch takes no new rows
        room, admitted = self.max_rows - running, []
        while self.waiting and len(self.waiting[0]) <= room:
            group = self.waiting[0]
            if not self.joining and admitted and len(group) != len(admitted[0]):
                break  # one prefill: the same number of samples a prompt
            self.waiting.popleft()
            if all(seq.cancelled for seq in group):
                for seq in group:
                    seq.end("cancelled")
                changed += group
                continue
            admitted.append(group)
            room -= len(group)
        return admitted

    def started(self, rows: list[Sequence]) -> None:
        for seq in rows:
            seq.state = State.RUNNING
        self.rows += rows


def fill_holes(keep: list[int]) -> list[int]:
    """The order of the m kept rows (ascending indices) in which the rows already among the first m stay
    where they are and the ones further back fill the holes, so a decoder's keep moves only those."""
    m = len(keep)
    order, movers = list(range(m)), [i for i in keep if i >= m]
    holes = sorted(set(range(m)) - set(keep))
    for hole, row in zip(holes, movers):
        order[hole] = row
    return order
