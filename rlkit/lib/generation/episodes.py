"""Multi-turn episodes in the generation engine: an environment's turns are forced tokens in the model's row.

An episode is one row of the decode loop (rlkit.lib.generation.sequence) with an `env`, its RowEnv:
1. start: the env's reset(seed) messages, rendered by the tokenizer (render_for_completion), are the row's
   prompt; a group's G rows share it (every env of a group must give the same first messages) and its prefill;
2. the model samples its turn, up to a stop token (the chat format's end of an assistant turn);
3. at that sampled stop token the scheduler (rlkit.lib.generation.scheduler) calls start(): the turn's text goes
   to env.step in the tools' thread pool (rlkit.lib.generation.tools.pool), off the decode thread, while the stop
   token itself is fed to the model; every row that ends a turn in a step submits in that step, so steps of many
   episodes run concurrently;
4. at the next step the scheduler calls reply(): it waits for the step, records the turn's reward, and either
   ends the row ("stop": done, or `max_turns` turns) or returns the reply's tokens, which are forced into the
   row with mask 0 in place of its draws; the row then samples its next turn (the draw the reply's first token
   replaced is dropped, so the row's draws go on from t = len(tokens), whatever else is in the batch).
Token in, token out: the row's trajectory is exactly its sampled tokens plus the env's forced ones, mask 1 only
on the sampled ones. A reply's tokens are what the tokenizer's chat format adds to the conversation so far when
the reply's messages and the next assistant turn's opening are appended (the user turn(s) and assistant_start
for rlkit's tokenizer): rendered once, never re-tokenised with the sampled text. A row that runs out of tokens
mid-turn ends ("length") without a step for that turn. The episode's reward is the sum of its turns' rewards.
The env contract: rlkit.lib.envs.env.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from rlkit.core.errors import RlkitError
from rlkit.lib.envs.env import Step, as_step, check_messages
from rlkit.lib.generation.tools import pool


@dataclass(eq=False)
class RowEnv:
    """One episode's state in its row: the env, the chat so far as text, its turns' rewards."""
    env: object
    tokenizer: object
    max_turns: int
    where: str  # names the env in error lines, e.g. "env 'retry' at rl step 3"
    history: list[dict] = field(default_factory=list)  # the chat so far: reset's messages, turns, replies
    rewards: list[float | None] = field(default_factory=list)  # one a turn the env stepped
    done: bool = False  # the env said so (else: max_turns, or the token budget)
    turn_start: int = 0  # where the model's current turn begins in the row's tokens
    pending: Future | None = field(default=None, repr=False)

    @property
    def reward(self) -> float:
        return float(sum(r for r in self.rewards if r is not None))

    def reset(self, seed: int) -> list[dict]:
        try:
            messages = self.env.reset(seed)
        except RlkitError:
            raise
        except Exception as e:
            raise RlkitError(f"{self.where}: reset() raised {type(e).__name__}: {e}") from e
        self.history = check_messages(messages, self.where)
        return self.history

    def start(self, seq) -> None:
        """At the row's sampled stop token: the turn's text goes to env.step, off the decode thread."""
        stops = set(self.tokenizer.stop_ids)
        text = self.tokenizer.decode([t for t in seq.tokens[self.turn_start:] if t not in stops])
        self.pending = pool().submit(self._step, text, len(self.rewards) + 1)

    def _step(self, text: str, turn: int) -> tuple:
        """(Step, the model's turn as a message, the reply's tokens or None): runs in a pool thread."""
        step = self.step(text)
        turn_text = {"role": "assistant", "content": text}
        if step.done or turn >= self.max_turns:
            return step, turn_text, None
        return step, turn_text, reply_tokens(self.tokenizer, [*self.history, turn_text], step.messages, self.where)

    def step(self, text: str) -> Step:
        """env.step(text), checked against the contract; a raise is one line naming the env."""
        try:
            return as_step(self.env.step(text), self.where)
        except RlkitError:
            raise
        except Exception as e:
            raise RlkitError(f"{self.where}: step() raised {type(e).__name__}: {e}") from e

    def reply(self, seq) -> list[int] | None:
        """The pending step's outcome: the reply's tokens to force into the row, or None when the episode ends."""
        future, self.pending = self.pending, None
        step, turn_text, tokens = future.result()
        self.rewards.append(step.reward)
        self.history += [turn_text, *step.messages]
        self.done = step.done
        if tokens is not None:
            self.turn_start = len(seq.tokens) + len(tokens)
        return tokens


def reply_tokens(tokenizer, history: list[dict], messages: list[dict], where: str) -> list[int]:
    """The tokens the chat format adds after `history` (ending in the model's turn) for `messages` and the next
    assistant turn's opening: render_for_completion(history + messages) minus render_conversation(history)."""
    before, _ = tokenizer.render_conversation(history)
    after = tokenizer.render_for_completion([*history, *messages])
    if after[:len(before)] != before:
        raise RlkitError(f"{where}: the tokenizer's chat format does not render a conversation's beginning as a "
                         "prefix of it, so an env's reply cannot be appended as tokens")
    return after[len(before):]


@dataclass(frozen=True)
class Episodes:
    """How a batch's rows become episodes: an env plugin's factory (its args bound), the most turns an episode
    takes, and the env's name for error lines ("stages.rl.env: env 'retry'")."""
    factory: Callable
    max_turns: int
    where: str

    def start(self, examples: list, samples: int, seeds: list[int], tokenizer) -> tuple[list[list[int]], list[RowEnv]]:
        """(one prompt an example, one RowEnv a row, prompt-major): `samples` envs of each example, each reset
        with its example's seed; they must all give the same first messages (the group shares one prompt)."""
        prompts, rows = [], []
        for example, seed in zip(examples, seeds):
            group = [RowEnv(self.make(example), tokenizer, self.max_turns, self.where) for _ in range(samples)]
            first = [row.reset(seed) for row in group]
            if any(messages != first[0] for messages in first[1:]):
                raise RlkitError(f"{self.where}: two envs of the same example and seed {seed} gave different first "
                                 "messages; reset(seed) must depend only on the example and the seed")
            prompts.append(tokenizer.render_for_completion(first[0]))
            rows += group
        return prompts, rows

    def first_messages(self, example, seed: int) -> list[dict]:
        """One episode's first messages: what its prompt renders."""
        return RowEnv(self.make(example), None, self.max_turns, self.where).reset(seed)

    def trial(self, example, text: str) -> Step:
        """reset(0) and one step with `text` on `example`, in this thread: what `rlkit check` tries."""
        row = RowEnv(self.make(example), None, self.max_turns, self.where)
        row.reset(0)
        return row.step(text)

    def make(self, example):
        try:
            return self.factory(example)
        except RlkitError:
            raise
        except Exception as e:
            raise RlkitError(f"{self.where}: the factory raised {type(e).__name__}: {e}") from e


def episode_metrics(rows: list[RowEnv], lengths: list[int], max_turns: int) -> dict[str, float]:
    """Means over the episodes, the same keys whatever happened (so ranks' means average exactly): turns,
    length in tokens (forced included), the share the env ended (done), and env/reward_turn<k>, the reward
    given at turn k (0 for an episode that did not reach it or was not scored there): they sum to the
    episode's reward."""
    n = max(len(rows), 1)
    out = {"env/turns": sum(len(r.rewards) for r in rows) / n, "env/episode_len": sum(lengths) / n,
           "env/done": sum(r.done for r in rows) / n}
    for k in range(max_turns):
        out[f"env/reward_turn{k + 1}"] = sum(r.rewards[k] or 0.0 for r in rows if len(r.rewards) > k) / n
    return out


def episodes(plugins, ref, max_turns: int, where: str) -> Episodes | None:
    """The Episodes of a YAML entry's `env: {name, args}` (a dict or PluginRef; None when there is none), its args
    bound; a misspelled env or bad args is one line naming `where`."""
    from functools import partial

    from rlkit.core.plugins import bind_args

    if ref is None:
        return None
    name, args = (ref["name"], ref.get("args")) if isinstance(ref, dict) else (ref.name, ref.args)
    fn = plugins.get("env", name, f"{where}.name")
    args = bind_args("env", name, fn, args or {}, f"{where}.args")
    return Episodes(partial(fn, **args) if args else fn, max_turns, f"{where}: env '{name}'")
