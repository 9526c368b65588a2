"""guess_number: find a secret number from "higher" / "lower" hints (a multi-turn game, no download).

    env: {name: guess_number, args: {high: 20, guesses: 5}}    # with task: {name: seeds}

reset(seed) draws the secret from 1..`high` with random.Random(seed), so a group's episodes share it. A reply
guesses with the number after its '####' (as the gsm8k reward reads it; a plain last number also counts). The
right number: reward 1, done. Otherwise reward 0 and the hint "Higher." or "Lower." (or "Answer with #### <number>."
when no number is found), until `guesses` replies; then done. Binary search finds any secret of 1..20 in 5.
"""
from __future__ import annotations

import random
import re

import rlkit
from rlkit.lib.envs.env import Env, Step
from rlkit.plugins.rewards.gsm8k import extract_answer

PROMPT = "I am thinking of a whole number from 1 to {high}. Guess it: end your reply with #### <number>."


class GuessNumber(Env):
    def __init__(self, high: int = 20, guesses: int = 5):
        self.high, self.guesses = high, guesses
        self.secret, self.tries = 0, 0

    def reset(self, seed: int) -> list[dict]:
        self.secret, self.tries = random.Random(seed).randint(1, self.high), 0
        return [{"role": "user", "content": PROMPT.format(high=self.high)}]

    def step(self, text: str) -> Step:
        self.tries += 1
        guess = read_guess(text)
        if guess == self.secret:
            return Step([], 1.0, True)
        if self.tries >= self.guesses:
            return Step([], 0.0, True)
        hint = "Answer with #### <number>." if guess is None else "Higher." if guess < self.secret else "Lower."
        return Step([{"role": "user", "content": hint}], 0.0, False)


def read_guess(text: str) -> int | None:
    answer = extract_answer(text)
    if answer is None:
        numbers = re.findall(r"-?\d+", text)
        return int(numbers[-1]) if numbers else None
    return int(answer) if answer == answer.to_integral_value() else None


def guess_number(example, high: int = 20, guesses: int = 5) -> GuessNumber:
    return GuessNumber(high, guesses)


@rlkit.hookimpl
def rlkit_envs():
    return {"guess_number": guess_number}
