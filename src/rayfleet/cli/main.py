"""Entry point of the ``rayfleet`` command and its single error boundary."""

from __future__ import annotations

import sys

import typer

from rayfleet import __version__
from rayfleet.cli import bulk as bulk_cmds
from rayfleet.cli import cluster as cluster_cmds
from rayfleet.cli import fleet as fleet_cmds
from rayfleet.cli import metrics as metrics_cmds
from rayfleet.cli import serve as serve_cmds
from rayfleet.cli import submit as submit_cmds
from rayfleet.cli import top as top_cmds
from rayfleet.cli import ui as ui_cmds
from rayfleet.cli import train as train_cmds
from rayfleet.cli._common import err_console
from rayfleet.errors import RayfleetError

__all__ = ["app", "main"]

app = typer.Typer(
    name="rayfleet",
    help="Your machines as one Ray cluster that trains and serves models: the built-in translator, "
         "and your own jobs and Serve apps.\n\n"
         "Example: rayfleet up --local && rayfleet serve examples/translate.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = {"on": False}


def _version(value: bool) -> None:
    if value:
        print(f"rayfleet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _debug["on"] = debug


cluster_cmds.register(app)
fleet_cmds.register(app)
serve_cmds.register(app)
train_cmds.register(app)
bulk_cmds.register(app)
submit_cmds.register(app)
metrics_cmds.register(app)
top_cmds.register(app)
ui_cmds.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print 'error: ...' plus a hint and exit 1."""
    if "--debug" in (argv if argv is not None else sys.argv[1:]):
        _debug["on"] = True
    try:
        app(args=argv, prog_name="rayfleet")
    except RayfleetError as e:
        if _debug["on"]:
            raise
        err_console.print(f"error: {e.message}", markup=False)
        if e.context:
            err_console.print(e.context, markup=False, style="dim")
        if e.hint:
            err_console.print(f"hint: {e.hint}", markup=False)
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
