"""The commands that score: `rlkit eval` (a checkpoint on tasks; rlkit/cli/evalrun.py) and
`rlkit reward NAME "completion" [--task T] [--arg k=v] [--plugin FILE]` (a reward's score on one string).

`rlkit reward` scores against the task's first example (train split, unless --split), as `rlkit check` tries
each reward with the reference reply: a plugin author sees what the reward returns, or its error in one
line, in a second and without a model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_TASK = "arithmetic"  # the embedded task (GSM8K format, no download)
PluginOpt = Annotated[Optional[list[Path]], typer.Option(
    "--plugin", help="A local plugin .py file to load (repeatable), e.g. your reward's.")]


def eval_(
    target: Annotated[Path, typer.Argument(help="A checkpoint: a step, stage or run folder (its last finished "
                                                "stage), e.g. runs/quickstart.")],
    task: Annotated[Optional[list[str]], typer.Option(
        "--task", help="A task to evaluate: NAME, NAME:1 (greedy) or NAME:k (k samples, pass@1..k); "
                       "repeatable.")] = None,
    examples: Annotated[Optional[int], typer.Option("--examples", min=1, help="Problems per task (default: the "
                                                                           "run's setting, else 500).")] = None,
    arg: Annotated[Optional[list[str]], typer.Option(
        "--arg", help="A task argument key=value (a YAML scalar), repeatable, e.g. --arg path=data/gsm8k.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
    plugin: PluginOpt = None,
    tool: Annotated[Optional[list[str]], typer.Option("--tool", help="A tool plugin the model may call while it "
                                                      "answers (repeatable), e.g. calculator.")] = None,
    env: Annotated[Optional[str], typer.Option("--env", help="An env plugin: each problem is an episode in it, "
                                               "rewarded by it, e.g. retry (`rlkit plugins` lists them).")] = None,
    max_turns: Annotated[Optional[int], typer.Option("--max-turns", min=1, help="With --env: the model's turns "
                                                     "an episode takes at most (default: the run's, else 4).")] = None,
):
    """Evaluate a saved checkpoint on tasks with the code eval stages use; in a run folder, with the run's
    settings and seed for each task it evaluated, so its figures repeat exactly."""
    from rlkit.cli import user_errors

    with user_errors():
        from rlkit.cli import evalrun
        from rlkit.cli.options import key_values
        from rlkit.core.dist import dist_info

        overrides = evalrun.Overrides(key_values(arg or [], "--arg"), tuple(tool or []), env, max_turns)
        rows = evalrun.evaluate_checkpoint(target, task or [], examples, plugin or [], overrides)
        if dist_info().is_main:
            typer.echo(json.dumps(rows, indent=2) if as_json else evalrun.render(rows))


def reward(
    name: Annotated[str, typer.Argument(help="The reward plugin, e.g. gsm8k (`rlkit plugins` lists them).")],
    completion: Annotated[str, typer.Argument(help="The completion to score, e.g. \"so it is 14. #### 14\".")],
    task: Annotated[str, typer.Option("--task", help="The task whose first example the reward scores against.")]
    = DEFAULT_TASK,
    arg: Annotated[Optional[list[str]], typer.Option(
        "--arg", help="A task argument key=value (a YAML scalar), repeatable, e.g. --arg operands=3.")] = None,
    split: Annotated[str, typer.Option("--split", help="The task's split.")] = "train",
    plugin: PluginOpt = None,
):
    """Score one completion with a reward plugin, against the first example of a task; prints the score and
    the example used."""
    from rlkit.cli import quick, user_errors

    with quick.short_lived(), user_errors():
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
