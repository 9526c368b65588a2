"""The plugin contract: one registration hook per plugin kind.

Each hook is collected from every plugin once at start-up and returns a table
`{name: callable}`. Training loops call the returned callables directly, never
`pm.hook`, so a plugin costs nothing per step. The docstrings below are the
contract; docs/plugins.md documents each hook under its exact signature.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rlkit")


@hookspec
def rlkit_algorithms() -> dict:
    """Return {name: factory}; factory(**args) -> Algorithm.

    An Algorithm has `advantages(rewards[P, G]) -> [P, G]`, `loss(logp[B, T],
    mask[B, T], adv[B], extra) -> scalar` and an optional set `needs` naming
    extra inputs core must compute ("old_logp", "ref_logp"), and an optional
    `min_samples` (completions per prompt it needs). `extra` always
    holds `num_tokens` and `num_sequences`: counts over the whole
    optimisation step (all micro-batches, all ranks).
    """


@hookspec
def rlkit_rewards() -> dict:
    """Return {name: reward}; reward(completion: str, example: Mapping, **args) -> float."""


@hookspec
def rlkit_optimizers() -> dict:
    """Return {name: factory}; factory(model, **args) -> torch.optim.Optimizer.

    Every param group must carry `initial_lr`: stages scale it by the schedule.
    """


@hookspec
def rlkit_tasks() -> dict:
    """Return {name: factory}; factory(split: str, **args) -> Task (a sequence of examples)."""
