"""`rlkit reward NAME "completion" [--task T] [--arg k=v] [--plugin FILE]`: a reward's score on one string.

The example is the task's first (train split, unless --split), as `rlkit check` tries each reward with the
reference reply: a plugin author sees what the reward returns, or its error in one line, in a second and
without a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_TASK = "arithmetic"  # the embedded task (GSM8K format, no download)


def reward(
    name: Annotated[str, typer.Argument(help="The reward plugin, e.g. gsm8k (`rlkit plugins` lists them).")],
    completion: Annotated[str, typer.Argument(help="The completion to score, e.g. \"so it is 14. #### 14\".")],
    task: Annotated[str, typer.Option("--task", help="The task whose first example the reward scores against.")]
    = DEFAULT_TASK,
    arg: Annotated[Optional[list[str]], typer.Option(
        "--arg", help="A task argument key=value (a YAML scalar), repeatable, e.g. --arg operands=3.")] = None,
    split: Annotated[str, typer.Option("--split", help="The task's split.")] = "train",
    plugin: Annotated[Optional[list[Path]], typer.Option(
        "--plugin", help="A local plugin .py file to load (repeatable), e.g. your reward's.")] = None,
):
    """Score one completion with a reward plugin, against the first example of a task; prints the score and
    the example used."""
    from rlkit.cli import user_errors

    with user_errors():
        from rlkit.cli.options import key_values
        from rlkit.core.config import PluginRef
        from rlkit.core.plugins import load_plugins
        from rlkit.lib.evaluation.trial import bound, build_task, sample, try_reward

        plugins = load_plugins(plugin or [])
        fn = bound(plugins, name, {}, "reward")
        rows = build_task(plugins, PluginRef(name=task, args=key_values(arg or [], "--arg")), split, "--task")
        example, reference = sample(rows)
        value = try_reward(name, fn, completion, example, "reward")
        question = next((m["content"] for m in example["messages"] if m["role"] == "user"), "")
        typer.echo(f"{name}: {value:g}")
        typer.echo(f"example: {task} ({split}) #0\n  question: {question}\n  reference: " + reference.replace("\n", "\n    "))
