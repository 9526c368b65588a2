"""retry: a task's problem, with one more try after a wrong answer (a two-turn episode, no download).

    env: {name: retry, args: {retries: 1, retry_reward: 0.5}}    # with task: {name: arithmetic}

Turn 1 is the example's question. A reply is right when the number after its '####' equals the reference
answer's (the gsm8k reward's reading: rlkit/plugins/rewards/gsm8k.py). Right: reward 1, done. Wrong: reward 0,
and the user says "That is not right. Try again." (`feedback`); a right answer on a later try earns
`retry_reward`, a wrong one after `retries` more tries ends the episode with 0. An evaluation counts an episode
correct when its reward is above 0.5, so with the default retry_reward pass@1 is first-try accuracy and the
reward's mean credits the second tries. Works with any task whose examples carry a GSM8K-style "answer".
"""
from __future__ import annotations

import rlkit
from rlkit.lib.envs.env import Env, Step
from rlkit.lib.text.task import prompt_messages
from rlkit.plugins.rewards.gsm8k import gsm8k

FEEDBACK = "That is not right. Try again."


class Retry(Env):
    def __init__(self, example, retries: int = 1, retry_reward: float = 0.5, feedback: str = FEEDBACK):
        self.example, self.retries, self.retry_reward, self.feedback = example, retries, retry_reward, feedback
        self.tries = 0

    def reset(self, seed: int) -> list[dict]:
        self.tries = 0
        return prompt_messages(self.example)

    def step(self, text: str) -> Step:
        self.tries += 1
        if gsm8k(text, self.example) == 1.0:
            return Step([], 1.0 if self.tries == 1 else self.retry_reward, True)
        if self.tries > self.retries:
            return Step([], 0.0, True)
        return Step([{"role": "user", "content": self.feedback}], 0.0, False)


def retry(example, retries: int = 1, retry_reward: float = 0.5, feedback: str = FEEDBACK) -> Retry:
    return Retry(example, retries, retry_reward, feedback)


@rlkit.hookimpl
def rlkit_envs():
    return {"retry": retry}
