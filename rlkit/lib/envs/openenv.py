"""OpenEnv environments as rlkit envs, duck-typed: no import of the openenv package.

OpenEnv's protocol (Hugging Face / Meta): an Environment has `reset(seed=...) -> Observation` and
`step(action) -> Observation`, where an Observation carries `done` and `reward` (and the env's own fields).
Any object that behaves so is adapted:

    from rlkit.lib.envs.openenv import openenv

    @rlkit.hookimpl
    def rlkit_envs():
        return {"echo": openenv(EchoEnvironment, action=lambda text: EchoAction(message=text))}

openenv(make, action=None, observe=None) returns an env factory `factory(example, **args)`: it calls
`make(**args)` for each episode (`example` is passed too when make takes a parameter named `example`).
`action(text)` builds the step's action from the model's reply (default: the text itself); `observe(obs)` is the
text shown to the model as a user message (default: the first of the observation's fields `prompt`, `message`,
`text`, `content`, `observation` that is a string, else str(obs)). Each step's reward is the observation's
`reward` (None: not scored), and the episode ends at its `done`. A dict observation works too (its keys).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

from rlkit.lib.envs.env import Env, Step

TEXT_FIELDS = ("prompt", "message", "text", "content", "observation")


def field(obs, name: str, default=None):
    return obs.get(name, default) if isinstance(obs, dict) else getattr(obs, name, default)


def default_observe(obs) -> str:
    for name in TEXT_FIELDS:
        value = field(obs, name)
        if isinstance(value, str):
            return value
    return str(obs)


class OpenEnv(Env):
    """One episode of an OpenEnv-protocol environment (module docstring)."""

    def __init__(self, env, action: Callable | None = None, observe: Callable | None = None):
        self.env, self.action, self.observe = env, action or (lambda text: text), observe or default_observe

    def reset(self, seed: int) -> list[dict]:
        return [{"role": "user", "content": self.observe(self.env.reset(seed=seed))}]

    def step(self, text: str) -> Step:
        obs = self.env.step(self.action(text))
        done, reward = bool(field(obs, "done", False)), field(obs, "reward")
        return Step([] if done else [{"role": "user", "content": self.observe(obs)}],
                    None if reward is None else float(reward), done)


def openenv(make: Callable, action: Callable | None = None, observe: Callable | None = None) -> Callable:
    """An rlkit env factory for an OpenEnv-protocol environment class or factory `make` (module docstring)."""
    takes_example = "example" in inspect.signature(make).parameters

    def factory(example, **args) -> OpenEnv:
        env = make(example=example, **args) if takes_example else make(**args)
        return OpenEnv(env, action, observe)

    factory.__signature__ = inspect.Signature(  # rlkit binds YAML args against make's own parameters
        [inspect.Parameter("example", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         *[p for name, p in inspect.signature(make).parameters.items() if name not in ("self", "example")]])
    return factory
