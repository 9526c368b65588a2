"""The `rlkit` command line: thin wrappers that hand off to rlkit.core (chat and serve: rlkit/cli/terminal_chat.py,
rlkit/cli/server.py).

Every user mistake is an RlkitError, printed here as one line (exit 1);
`rlkit --debug ...` shows the traceback instead. Heavy imports (torch, aim,
datasets) happen inside the commands, so `rlkit --help` answers at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

import rlkit
from rlkit.cli import quick
from rlkit.core.errors import RlkitError
from rlkit.core.files import write_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train language models with reinforcement learning, one YAML file at a time.",
)
_state = {"debug": False}

ExperimentArg = Annotated[Path, typer.Argument(help="The experiment YAML file, e.g. experiments/quickstart.yaml.")]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(
    help="Config overrides as key=value, e.g. seed=1 stages.rl.steps=20.", show_default=False)]
PluginOpt = Annotated[Optional[list[Path]], typer.Option(
    "--plugin", help="A local plugin .py file to load (repeatable), in addition to the YAML's `plugins:`.")]
ToolOpt = Annotated[Optional[list[str]], typer.Option("--tool", help="A tool plugin the model may call while it "
                                                                      "samples (e.g. calculator); repeatable.")]


@contextlib.contextmanager
def user_errors():
    """Print an RlkitError as one line and exit 1; with --debug, show the traceback."""
    try:
        yield
    except RlkitError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        if type(e).__name__ == "Interrupted":  # a clean stop: say how to continue
            argv = [a for a in sys.argv[1:] if a != "--resume"]
            typer.echo(f"resume with: rlkit {shlex.join(argv)} --resume", err=True)  # quoted: paste it as is
        raise typer.Exit(1) from None
    except OSError as e:  # a write no rlkit code wrapped (files.writing): still one line naming the file
        error = write_error(e, Path(e.filename)) if e.filename else None
        if error is None or _state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def _version(value: bool):
    if value:
        typer.echo(f"rlkit {rlkit.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print rlkit's version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
):
    """rlkit: compose a pipeline of stages (tokenizer, pretrain, midtrain, sft, rl, eval, your own) from plugins in
    one YAML file."""
    _state["debug"] = debug


@app.command()
def run(
    experiment: ExperimentArg,
    overrides: OverridesArg = None,
    plugin: PluginOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's last complete checkpoint.")] = False,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", min=1,
                                                help="Processes on this node (one per GPU); >1 relaunches "
                                                     "through torchrun.")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Number of nodes for a multi-node run.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="This node's rank in a multi-node run.")] = 0,
    rdzv_endpoint: Annotated[str, typer.Option("--rdzv-endpoint",
                                               help="HOST:PORT of the rendezvous (node 0) for multi-node runs.")] = "",
    sweep: Annotated[Optional[list[str]], typer.Option(
        "--sweep", help="key=a,b: run the experiment once per value (repeatable: the cross product), one run "
                        "after another, each named after its values; ends with `rlkit compare` of them all.")] = None,
):
    """Validate the experiment and its plugins, then run its stages in order (alone or under torchrun)."""
    with user_errors():
        from rlkit.cli import running

        world = nproc_per_node * nnodes
        cfg, plugins, _ = running.prepare(experiment, overrides or [], plugin or [], world_size=world)
        from rlkit.cli.launch import die_with_launcher, torchrun

        die_with_launcher()  # a torchrun worker ends with its launcher, however the launcher ends
        if world > 1 and "RANK" not in os.environ:  # relaunch this very command under torchrun
            torchrun(sys.argv[1:], nproc_per_node, nnodes, node_rank, rdzv_endpoint)
            return
        if sweep:
            from rlkit.cli import sweep as sweep_lib

            sweep_lib.run(experiment, overrides or [], plugin or [], sweep, world)
            return
        running.run(cfg, plugins, resume)


@app.command()
def check(experiment: ExperimentArg, overrides: OverridesArg = None, plugin: PluginOpt = None):
    """Resolve the config and plugins, bind every plugin's args, print the resolved YAML; builds no model
    (each optimizer is tried once on a tiny stand-in)."""
    with quick.short_lived(), user_errors():
        from omegaconf import OmegaConf

        from rlkit.cli import running
        from rlkit.core import config
        from rlkit.lib.training.optim import lr_plans

        cfg, _, entries = running.prepare(experiment, overrides or [], plugin or [])
        typer.echo(OmegaConf.to_yaml(cfg), nl=False)
        typer.echo("".join(f"# {line}\n" for line in lr_plans(entries)), nl=False, err=True)
        typer.echo(f"# ok: stages {', '.join(config.stages_to_run(cfg))}", err=True)


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
    plugin: PluginOpt = None,
):
    """List every loaded plugin (package or file, version) and the names it provides per kind."""
    with quick.short_lived(), user_errors():
        from rlkit.core.plugins import load_plugins

        found = load_plugins(plugin or [])
        rows = [{"plugin": i.name, "source": i.source, "provides": i.provides} for i in found.infos]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(row["provides"].items()))
            typer.echo(f"{row['plugin']:<40} {row['source']:<16} {provides or '(provides nothing)'}")


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A checkpoint (step folder), a stage folder or a run folder (its "
                                                "last finished stage).")],
    folder: Annotated[Path, typer.Argument(help="The folder to write, in Hugging Face format.")],
    plugin: PluginOpt = None,
):
    """Write a checkpoint as a folder that transformers' AutoModelForCausalLM and AutoTokenizer load (written
    to a hidden folder, then renamed: a killed export leaves no half-written model)."""
    with user_errors():
        from rlkit.cli import exporting

        written, notes = exporting.export(source, folder, plugin or [])
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        config = folder / "config.json"  # a model with remote code (auto_map) loads only with trust_remote_code
        remote = config.is_file() and "auto_map" in json.loads(config.read_text())
        load = f"{str(folder)!r}{', trust_remote_code=True' if remote else ''}"
        typer.echo(f"rlkit: wrote {written} to {folder} (AutoModelForCausalLM.from_pretrained({load}))")


RepoOpt = Annotated[Path, typer.Option("--repo", help="The Aim repository of the runs (an experiment's "
                                                      "tracking.repo).")]


@app.command()
def ui(
    repo: RepoOpt = Path(".aim"),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The port to serve the UI on.")] = 43800,
    host: Annotated[str, typer.Option("--host", help="The address to bind; the default keeps the UI on this "
                                                     "machine.")] = "127.0.0.1",
):
    """Open the Aim UI on the runs' repository and print its URL; Ctrl-C stops the whole server."""
    with user_errors():
        from rlkit.cli import aimui

        raise typer.Exit(aimui.serve(repo, host, port))


@app.command("compare")
def compare_(  # the function is not named compare: that would shadow a module of this package
    runs: Annotated[Optional[list[str]], typer.Argument(
        help="Run names or Aim hashes; default: the last two runs of the newest run's experiment.",
        show_default=False)] = None,
    metric: Annotated[Optional[list[str]], typer.Option(
        "--metric", help="A metric to show (repeatable); default: loss, bits/byte, reward, pass@k and speed.")] = None,
    repo: RepoOpt = Path(".aim"),
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
):
    """Print runs side by side from Aim: final and best metrics per stage, wall times, config differences."""
    with user_errors():
        from rlkit.cli.comparison import compare as compare_runs, render

        result = compare_runs(repo, runs or [], metric or [])
        typer.echo(json.dumps(result, indent=2) if as_json else render(result))


CheckpointArg = Annotated[Path, typer.Argument(
    help="A run folder (its last finished stage), a stage folder or a checkpoint folder, e.g. runs/quickstart.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where the model runs: cpu, cuda, cuda:1, ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Compute dtype: float32 (replies equal rlkit's sampler in "
                                                       "float32), bfloat16 or float16 (a copy of the weights).")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0, help="Sampling temperature; 0 is greedy.")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", min=1, help="Sample among the k likeliest tokens only.")]


@app.command()
def chat(
    checkpoint: CheckpointArg,
    prompt: Annotated[Optional[str], typer.Option("-p", "--prompt", help="Answer this one question and exit.")] = None,
    temperature: TemperatureOpt = 0.6,
    top_k: TopKOpt = 50,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens in one reply.")] = 256,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the first reply (turn k: seed + k); "
                                                               "default: random.")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    tool: ToolOpt = None,
    plugin: PluginOpt = None,
):
    """Talk to a saved model in the terminal: replies stream as they are sampled (--tool calls inline); /clear, /quit."""
    with user_errors():
        from rlkit.cli import terminal_chat

        terminal_chat.run(checkpoint, prompt, temperature, top_k, max_tokens, seed, device, _dtype(dtype),
                          tool or [], plugin or [])


@app.command()
def serve(
    checkpoint: CheckpointArg,
    host: Annotated[str, typer.Option("--host", help="The address to listen on; anything but loopback makes the "
                                                     "model reachable from other machines (a warning says so).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The port; 0 picks a free one.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="RLKIT_API_KEY", help="Require "
                       "'Authorization: Bearer KEY' on every /v1 route.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most completion tokens a request may "
                                                                        "ask for.")] = 1024,
    max_concurrent: Annotated[int, typer.Option("--max-concurrent", min=1, help="Requests in flight; more get "
                                                                                "429.")] = 64,
    max_rows: Annotated[int, typer.Option("--max-rows", min=1, help="Most sequences decoded together (a request "
                                                                    "with n samples takes n).")] = 64,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Largest request body.")] = 1_000_000,
    max_messages: Annotated[int, typer.Option("--max-messages", min=1, help="Most messages in a request.")] = 256,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds one request may take (504 "
                                                                        "after).")] = 120.0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    tool: ToolOpt = None,
    plugin: PluginOpt = None,
):
    """Serve a saved model: an OpenAI-compatible API (/v1/chat/completions, /v1/models), /health, and a chat
    page at /. Concurrent requests share one decode batch; --tool calls run server-side. Ctrl-C stops it."""
    with user_errors():
        from rlkit.cli import server
        from rlkit.cli.openai_api import Limits

        limits = Limits(max_body_bytes, max_tokens, max_messages, min(16, max_rows), max_concurrent, timeout)
        server.serve(checkpoint, host, port, api_key, limits, device, max_rows, _dtype(dtype), tool or [], plugin or [])


def _dtype(name: str):
    import torch

    valid = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in valid:
        raise RlkitError(f"--dtype {name}: valid: {', '.join(valid)}")
    return valid[name]


from rlkit.cli import scoring  # noqa: E402 -- eval and reward, in a module of their own; light (typer only)

app.command("eval")(scoring.eval_)
app.command("reward")(scoring.reward)


def main():
    """Console-script entry point; a usage mistake is one `error:` line too (rlkit/cli/usage.py)."""
    from rlkit.cli.usage import run_app

    with quick.ending():  # check, plugins and reward end the process at once (rlkit/cli/quick.py)
        run_app(app)


if __name__ == "__main__":
    sys.exit(main())
