"""The plugin contract: one registration hook per plugin kind.

Each hook is collected from every plugin once at start-up and returns a table
`{name: callable}` (for stages, `{name: Stage}`). Training loops call the
returned callables directly, never `pm.hook`, so a plugin costs nothing per
step. Each docstring says what the table holds: the stage, model and algorithm
hooks point to the module that holds their values' contract, the others state
it here. docs/plugins.md documents every hook under its exact signature, with
a complete example.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rlkit")


@hookspec
def rlkit_stages() -> dict:
    """Return {name: rlkit.core.stage.Stage}: one step of the pipeline (pretrain, sft, rl, ...); a Stage's
    config, run, check, report and evals are described in rlkit/core/stage.py."""


@hookspec
def rlkit_models() -> dict:
    """Return {name: factory}; factory(tokenizer, seq_len, **args) -> Policy: an nn.Module with the training
    forward, param_roles(), spec() and decoder(dtype), described in rlkit/core/policy.py. `tokenizer` is the
    run's, or None when the model brings its own (then the Policy has a `tokenizer` attribute)."""


@hookspec
def rlkit_algorithms() -> dict:
    """Return {name: factory}; factory(**args) -> Algorithm: `advantages(rewards[P, G]) -> [P, G]` and
    `loss(logp[B, T], mask[B, T], adv[B], extra) -> scalar`, plus optional attributes with defaults
    (needs, min_samples, filter_groups, shape, clipped, state_dict, ...), all described on the base class
    rlkit.lib.training.algorithm.Algorithm. An algorithm need not subclass it: a missing attribute takes
    the base class's default."""


@hookspec
def rlkit_rewards() -> dict:
    """Return {name: reward}; reward(completion: str, example: Mapping, **args) -> float.

    A reward may instead be an object with __call__ and `score_batch(completions, examples, **args) ->
    list[float]`, which stages call once for a whole batch (e.g. to run programs in parallel). It may return a
    rlkit.lib.evaluation.scoring.Scored: the values, plus per-completion figures tracked as `reward/<name>/<figure>`.
    """


@hookspec
def rlkit_optimizers() -> dict:
    """Return {name: factory}; factory(model, **args) -> torch.optim.Optimizer.

    Every param group must carry `initial_lr`: stages scale it by the schedule.
    """


@hookspec
def rlkit_tasks() -> dict:
    """Return {name: factory}; factory(split: str, **args) -> Task (a sequence of examples).

    A rlkit.lib.text.task.Task may also say how it is evaluated: evaluation="generative" (default; scored by
    a reward plugin, its default named by `reward`) or "choice" (multiple choice: each example adds
    "choices" and "gold"), and `title`, its row on the report card. A plain list is generative. A Task may
    adapt to training (a curriculum): the rl stage calls `observe(step, stats) -> dict` after each step and
    tracks what it returns, and checkpoints `state_dict()` (restored with `load_state_dict(state)`).
    """


@hookspec
def rlkit_tools() -> dict:
    """Return {name: tool}; tool(call: str, **args) -> str: the model's call text in, the text to show it out.

    A tool is called off the decode thread (rlkit.lib.generation.tools), maybe from several threads at
    once, under a per-call timeout. It should return an error text rather than raise; the engine also
    turns anything it raises, a timeout or an oversized output into a short error text for the model,
    so a tool never ends a run.
    """


@hookspec
def rlkit_envs() -> dict:
    """Return {name: factory}; factory(example: Mapping, **args) -> Env: a multi-turn environment for one episode.

    An Env (rlkit.lib.envs.env) has `reset(seed: int) -> messages` (the chat the model answers first) and
    `step(text: str) -> Step(messages, reward, done)` (its reply to the model's turn, that turn's reward, and
    whether the episode is over). The engine calls both off the decode thread, a new Env an episode; the
    episode's reward is the sum of its turns' rewards.
    """


@hookspec
def rlkit_tokenizers() -> dict:
    """Return {name: load}; load(folder: Path) -> tokenizer: reads a tokenizer folder that a checkpoint refers
    to (what a tokenizer stage saved). The folder's tokenizer.json names the plugin that reads it ("kind").

    A tokenizer has `encode(text)`, `decode(ids)`, `stop_ids`, `vocab_size`, `render_conversation(messages,
    max_len)` -> (ids, mask) and `render_for_completion(messages)` -> ids, and may report `tool_tokens`
    (rlkit.core.policy.ToolTokens).
    """
