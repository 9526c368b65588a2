"""textarena: textarena's single-player games as envs (optional: pip install 'rlkit[envs]').

    env: {name: textarena, args: {game: GuessTheNumber-v0}}    # with task: {name: seeds}

reset(seed) makes the game (textarena.make, its wrappers left off: this adapter renders the observations) and
resets it for one player with `seed`; the model's turn is the game's action text as it is (games read their move
in brackets, "[5]"). Each turn's reply is the game's new observations (its messages, not the model's own move)
as one user message. The game's reward comes when it ends, from close() (textarena's own: 1 for a win, else its
share of completion for some games), the episode's only reward; earlier turns give none. A game allows one
invalid move (its message says why) and ends at the second.

Offline on a CPU (textarena 0.7.4): GuessTheNumber, TowerOfHanoi, Sudoku, Mastermind, Crosswords, Minesweeper,
FifteenPuzzle and LightsOut run. Word games (Wordle, Hangman, ...) call nltk.download for their word lists and
fail without the network (LookupError: Resource 'words' not found), unless nltk's data is installed.

Determinism: textarena's games draw from Python's global `random` (and reset() reseeds it). Every call into the
game runs under one lock with the global RNG state swapped for the game's own (seeded from rlkit's seed) and put
back afterwards, so rlkit's random state and other episodes' games (which step concurrently in threads) are never
touched: the same seeds give the same games and the same run.
"""
from __future__ import annotations

import random
import threading
from contextlib import contextmanager

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.envs.env import Env, Step

_lock = threading.Lock()  # one game call at a time: they share the global RNG


class TextArena(Env):
    def __init__(self, game: str):
        self.game, self.env, self.rng = game, None, None

    @contextmanager
    def own_random(self):
        """The global RNG holds this game's state during the call; the caller's is restored afterwards."""
        with _lock:
            outside = random.getstate()
            random.setstate(self.rng)
            try:
                yield
            finally:
                self.rng = random.getstate()
                random.setstate(outside)

    def reset(self, seed: int) -> list[dict]:
        self.rng = random.Random(seed).getstate()
        with self.own_random():
            self.env = make(self.game)
            self.env.reset(num_players=1, seed=seed)
            return [{"role": "user", "content": self.observation()}]

    def step(self, text: str) -> Step:
        with self.own_random():
            done, _ = self.env.step(text)
            if done:
                closed = self.env.close()  # textarena 0.7: (rewards, game info); earlier: rewards
                rewards = closed[0] if isinstance(closed, tuple) else closed
                return Step([], float(rewards[0]), True)
            return Step([{"role": "user", "content": self.observation()}], None, False)

    def observation(self) -> str:
        player, seen = self.env.get_observation()
        return "\n".join(message for sender, message, _ in seen if sender != player)


def make(game: str):
    try:
        import textarena
    except ImportError:
        raise RlkitError("env 'textarena' needs the textarena package: pip install 'rlkit[envs]' "
                         "(or pip install textarena)") from None
    env = textarena.make(game)
    while isinstance(env, textarena.core.Wrapper):  # its observation and action wrappers: rlkit renders the chat
        env = env.env
    return env


def textarena_env(example, game: str = "GuessTheNumber-v0") -> TextArena:
    return TextArena(game)


@rlkit.hookimpl
def rlkit_envs():
    return {"textarena": textarena_env}
