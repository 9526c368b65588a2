"""A sequence: one row of the generation engine (a prompt and one completion of it) and its state.

A row's completion is `tokens`, with `mask` beside it: 1 on the tokens the model sampled (a stop token
included), 0 on tokens forced into the row from outside (a tool's output, an environment's reply), which
training must never treat as the policy's. `key` seeds the row's draws (rlkit.lib.generation.draw), so its
tokens depend only on its prompt, its forced tokens and its seed. States:
    WAITING: queued, not yet prefilled;
    RUNNING: in the decode batch; each step appends one token, the next forced one if any is queued
        (`forced`), else the one drawn;
    ENDED: done, with `finish` "stop" (its stop token), "length" (max_new tokens), "cancelled" or "error";
        it leaves the decode batch at the scheduler's next compaction.
`resume` is where a multi-turn environment plugs in: called when the row samples a stop token, it returns
the tokens to force into the row (mask 0) before it samples again, or None to end it. `tools` is the row's
tool-call state (rlkit.lib.generation.tools.RowTools), None for a row that calls no tool: at a sampled
call-end token its call runs off the decode thread and its output is forced into the row the same way.
`env` is an episode's environment state (rlkit.lib.generation.episodes.RowEnv), None for a one-turn row: at a
sampled stop token the env's step runs off the decode thread, and its reply is forced into the row the same way.
"""
from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rlkit.lib.generation.draw import Sampling


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    ENDED = "ended"


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    key: int  # draw.row_key(seed)
    max_new: int  # the completion's most tokens, forced ones included
    sampling: Sampling = Sampling()
    tokens: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    state: State = State.WAITING
    finish: str | None = None
    entropy: float = 0.0  # nats summed over the sampled tokens' distributions (when the engine is asked to)
    logprobs: list[tuple[float, float]] = field(default_factory=list)  # per draw (sampled, model): loop.py
    forced: deque[int] = field(default_factory=deque)  # tokens to feed before the next draw (mask 0)
    resume: Callable[[Sequence], list[int] | None] | None = None  # see the module docstring
    tools: object = None  # a RowTools (rlkit.lib.generation.tools), see the module docstring
    env: object = None  # a RowEnv (rlkit.lib.generation.episodes): the row is an episode, see the docstring
    cancelled: bool = False  # set by any thread: the row ends at the next step
    on_end: Callable[[Sequence], None] | None = None  # called once, from the engine's thread, when it ends
    owner: object = None  # who submitted it (the Engine's Request)

    @property
    def samples_next(self) -> bool:
        """Whether the row's next token is its own draw (not forced, not waiting for an env's reply)."""
        return self.state is State.RUNNING and not self.forced and (self.env is None or self.env.pending is None)

    def force(self, tokens: list[int]) -> None:
        """Queue `tokens` to be fed into this live row, one a step, with mask 0, before it samples again."""
        self.forced.extend(tokens)

    def end(self, reason: str) -> None:
        if self.state is State.ENDED:
            return
        self.state, self.finish = State.ENDED, reason
        if self.on_end is not None:
            self.on_end(self)
