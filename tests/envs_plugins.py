"""Test plugins for the env tests, written to a local plugin file (tests/test_envs_rl.py): a task whose reply is
"1", an env that asks for "1" `turns` times (reward 1 a turn that says exactly "1"), logging each
episode's (seed, reward so far, question) at each step and holding on cue (RLKIT_TEST_BLOCK), and grpo whose
advantages() logs the (P, G) rewards it is given (rank 0)."""

PLUGIN = '''
import json
import os
import pathlib
import time

import rlkit
from rlkit.plugins.algorithms.grpo import grpo


@rlkit.hookimpl
def rlkit_tasks():
    return {"say1": say1}


@rlkit.hookimpl
def rlkit_envs():
    return {"again": Again}


@rlkit.hookimpl
def rlkit_algorithms():
    return {"logged_grpo": logged_grpo}


def say1(split, size=64):
    first = 0 if split == "train" else 1000
    return [{"messages": [{"role": "user", "content": f"say 1, case {i}"}, {"role": "assistant", "content": "1"}],
             "answer": "#### 1"} for i in range(first, first + size)]


class Again:
    def __init__(self, example, turns=3, log=""):
        self.example, self.turns, self.log = example, turns, log

    def reset(self, seed):
        self.seed, self.said, self.total = seed, 0, 0.0
        return [self.example["messages"][0]]

    def step(self, text):
        hold(self)
        self.said += 1
        reward = float(text.strip() == "1")
        self.total += reward
        done = self.said >= self.turns
        if self.log:  # an episode's last line holds its reward (one cut short by max_new_tokens has no "done")
            with open(self.log, "a") as f:
                f.write(json.dumps({"episode": id(self), "seed": self.seed, "reward": self.total,
                                    "question": self.example["messages"][0]["content"]}) + "\\n")
        return ([] if done else [{"role": "user", "content": "again"}]), reward, done


groups = set()  # the rl rollouts' groups (reset seeds of train questions) seen by this process


def hold(env):
    """RLKIT_TEST_BLOCK="group:N": the first step of the N-th rl group this process runs writes RLKIT_TEST_MARKER
    and holds there until the process is killed."""
    if int(env.example["messages"][0]["content"].split()[-1]) >= 1000 or env.seed == 0:
        return  # an eval's episode (test questions), or rlkit check's trial
    groups.add(env.seed)
    if os.environ.get("RLKIT_TEST_BLOCK") == f"group:{len(groups)}" and env.said == 0:
        pathlib.Path(os.environ["RLKIT_TEST_MARKER"]).write_text("held")
        while True:
            time.sleep(0.05)


def logged_grpo(log="rewards.jsonl"):
    algorithm = grpo()
    advantages = algorithm.advantages

    def logged(rewards):
        with open(log if os.environ.get("RANK", "0") == "0" else os.devnull, "a") as f:
            f.write(json.dumps(rewards.tolist()) + "\\n")
        return advantages(rewards)

    algorithm.advantages = logged
    return algorithm
'''

# An OpenEnv-protocol environment (reset(seed=...), step(action) -> an observation with done and reward, and a
# state), written here without the openenv package, and registered through rlkit's duck-typed adapter.
OPENENV = '''
from dataclasses import dataclass, field

import rlkit
from rlkit.lib.envs.openenv import openenv


@dataclass
class SayAction:
    message: str


@dataclass
class SayObservation:
    prompt: str
    done: bool = False
    reward: float | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class SayState:
    episode_id: str | None = None
    step_count: int = 0


class SayEnvironment:
    """Asks for "1" `rounds` times; reward 1 for each exact "1"."""

    def __init__(self, rounds: int = 2):
        self.rounds, self._state = rounds, SayState()

    def reset(self, seed=None, episode_id=None, **kwargs):
        self._state = SayState(episode_id=episode_id)
        return SayObservation(prompt=f"say 1, case {seed % 50}")

    def step(self, action: SayAction, timeout_s=None, **kwargs):
        self._state.step_count += 1
        return SayObservation(prompt="again", reward=float(action.message.strip() == "1"),
                              done=self._state.step_count >= self.rounds)

    @property
    def state(self):
        return self._state


@rlkit.hookimpl
def rlkit_envs():
    return {"say": openenv(SayEnvironment, action=lambda text: SayAction(message=text))}
'''
