"""The environment contract: what an `rlkit_envs` plugin's factory returns, one object an episode.

    env = factory(example, **args)    # example: a task's row (a dict); args: the YAML's `env: {name, args}`
    messages = env.reset(seed)        # the chat the model answers first: [{"role": "user", "content": ...}]
    step = env.step(text)             # the model's reply (one assistant turn, as text) -> Step

An episode alternates turns: the model samples a reply, ended by its stop token; `step` scores it and answers
with the next messages (user turns), until `done`, `max_turns` replies, or the episode's token budget runs out.
The episode's reward is the sum of its turns' rewards (a turn whose reward is None gives none).

Why this shape (the issue's reset/step contract, typed): text in, text out, so an env never sees tokens and works
with any tokenizer; the engine renders its messages with the tokenizer's chat format and forces them into the row
with mask 0 (rlkit.lib.generation.episodes). A turn's reward comes with its step, as a game scores each move, so an
env needs no reward plugin. `step` may return a plain `(messages, reward, done)` tuple; Step is that tuple, named.
Deterministic: the same example and seed give the same first messages (a group's G episodes share one prompt and
prefill), and the replies depend only on the texts so far. A new Env is made for every episode; several run at
once in threads, so an env that touches global state (textarena's `random`) guards it itself.
Peers: TRL's environment_factory, Tinker's Env, verl's AgentLoop; OpenEnv and textarena adapt to this
(rlkit/plugins/envs/).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from rlkit.core.errors import RlkitError


class Step(NamedTuple):
    messages: list[dict]  # the env's reply: the next user turn(s); [] when done
    reward: float | None = None  # this turn's reward; None: the turn is not scored
    done: bool = False  # the episode is over


class Env:
    """An optional base class: subclass it, or write any object with these two methods."""

    def reset(self, seed: int) -> list[dict]:
        raise NotImplementedError

    def step(self, text: str) -> Step:
        raise NotImplementedError


def as_step(value, where: str) -> Step:
    """A step's result as a Step, or one line naming the env and what was wrong."""
    if not isinstance(value, tuple) or len(value) != 3:
        raise RlkitError(f"{where}: step() returned {type(value).__name__} {value!r:.80}; return "
                         "Step(messages, reward, done) or a (messages, reward, done) tuple")
    messages, reward, done = value
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))
                               or not math.isfinite(reward)):
        raise RlkitError(f"{where}: step() returned the reward {reward!r}; a reward is a finite number or None")
    return Step(check_messages(messages, where, "step()", allow_empty=bool(done)), reward, bool(done))


def check_messages(messages, where: str, what: str = "reset()", allow_empty: bool = False) -> list[dict]:
    """Chat messages as the tokenizer renders them: a list of {"role": "user" | "system" | "assistant", "content":
    str}; one line naming the env otherwise."""
    ok = isinstance(messages, (list, tuple)) and (allow_empty or messages) and all(
        isinstance(m, Mapping) and m.get("role") in ("user", "system", "assistant") and isinstance(m.get("content"), str)
        for m in messages)
    if not ok:
        raise RlkitError(f"{where}: {what} returned {messages!r:.100}; expected a non-empty list of "
                         "{'role': 'user', 'content': str} messages")
    return [dict(m) for m in messages]
