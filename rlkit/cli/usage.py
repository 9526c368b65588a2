"""Running the typer app so that a usage mistake is one line too.

Click (under typer) answers a missing argument, an unknown option or a value of the wrong type with a usage
box and no `error:` line. Here the app runs with standalone_mode=False, so those mistakes arrive as click
exceptions, and each is printed as `error: rlkit <command>: <what is wrong> (see rlkit <command> --help)`,
exit 2; `rlkit` alone still prints the help.
"""
from __future__ import annotations

import sys

import typer

try:  # typer >= 0.22 carries its own copy of click, whose exceptions are not click's
    from typer import _click as click
except ImportError:  # pragma: no cover -- older typer runs on click itself
    import click


def run_app(app: typer.Typer) -> None:
    """Run `app` as the `rlkit` command and exit with its status."""
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
    UsageError, ClickException = click.exceptions.UsageError, click.exceptions.ClickException
    Abort = getattr(typer, "Abort", None) or click.exceptions.Abort
    try:
        code = app(prog_name="rlkit", standalone_mode=False)
    except no_args as e:  # `rlkit` (or a group) alone: its help, as before
        typer.echo(e.ctx.get_help())
        sys.exit(0)
    except UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "rlkit"
        typer.echo(f"error: {where}: {' '.join(e.format_message().split())} (see {where} --help)", err=True)
        sys.exit(e.exit_code)
    except ClickException as e:
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
