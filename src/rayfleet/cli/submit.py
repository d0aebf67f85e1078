"""``rayfleet submit``: any program as a Ray Job, followed to its end."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from rayfleet.cli._common import FLEET_OPTION, console, err_console, quiet_ray_logs

__all__ = ["register"]

def _note(text: str) -> None:
    """rayfleet's own lines go to stderr: stdout is the job's log."""
    err_console.print(text, markup=False)


def submit(
    command: list[str] = typer.Argument(None, metavar="-- COMMAND [ARGS]...",
                                        help="The command the job runs, after '--'."),
    working_dir: Optional[Path] = typer.Option(
        None, "--working-dir", help="Directory uploaded as the job's working directory (.git, .venv, __pycache__ "
                                    "and what .gitignore/.rayignore list are left out)."),
    requirements: Optional[Path] = typer.Option(None, "--requirements",
                                                help="pip requirements file installed for this job only."),
    env: list[str] = typer.Option([], "--env", metavar="NAME=VALUE", help="Environment variable of the job "
                                                                          "(repeatable)."),
    num_cpus: float = typer.Option(0, "--num-cpus", min=0, help="CPUs reserved for the command itself."),
    num_gpus: float = typer.Option(0, "--num-gpus", min=0, help="GPUs reserved for the command itself."),
    resources: Optional[str] = typer.Option(None, "--resources", metavar="JSON",
                                            help='Custom resources reserved for the command, e.g. \'{"ssd": 1}\'.'),
    name: Optional[str] = typer.Option(None, "--name", help="Job name (default: the script's name)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Submit and return at once."),
    unplaceable_timeout: float = typer.Option(
        120, "--unplaceable-timeout", min=1,
        help="Stop the job when it waited this many seconds for more than any node has (its entrypoint, "
             "or its tasks and actors)."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Run your own program on the cluster as a Ray Job; stream its log; exit with its outcome.

    The command runs on the cluster (the local one, or the fleet of -f) in the uploaded
    working directory; its log is printed as it is written, rayfleet's own lines go to
    stderr. Exit code: 0 when the job succeeded, 1 when it failed (its last log lines are
    shown), 130 after Ctrl-C, which asks whether to stop the job on a terminal and
    detaches otherwise (the job keeps running). A job is listed by 'rayfleet jobs' (kind
    submit).

    Example: rayfleet submit --working-dir examples/own-code -- python train.py --epochs 2
    """
    import rayfleet
    from rayfleet.errors import ConfigError
    from rayfleet.jobs import own

    if not command:
        raise ConfigError("No command to run.",
                          hint="Put it after '--', e.g. rayfleet submit --working-dir . -- python train.py")
    cluster = rayfleet.connect(fleet_file)
    quiet_ray_logs()
    job = cluster.submit(command, working_dir=working_dir, requirements=requirements, env=env, num_cpus=num_cpus,
                         num_gpus=num_gpus, resources=resources, name=name)
    try:  # from here on Ctrl-C asks about (or detaches from) the submitted job, even while this line prints
        _note(f"Submitted job {job.id} on the {cluster.description}.")
        if detach:
            _note(f"Follow it with: rayfleet jobs logs {job.id} --follow")
            return
        end = job.follow(on_line=lambda line: console.print(Text.from_ansi(line)),  # no colour codes in a pipe
                         on_waiting=_note, unplaceable_timeout_s=unplaceable_timeout)
    except KeyboardInterrupt:
        _interrupted(job)
        raise typer.Exit(130)
    if end.succeeded:
        _note(f"Job {job.id} succeeded.")
        return
    _note(f"error: job {job.id} {own.failure_summary(end)}")
    if end.tail:
        _note("last lines of its log:\n" + "\n".join(f"  {ln}" for ln in end.tail[-10:]))
    hint = own.failure_hint(end.info)
    if hint:
        _note(f"hint: {hint}")
    _note(f"hint: the whole log: rayfleet jobs logs {job.id}")
    raise typer.Exit(1)


def _interrupted(job) -> None:
    """Ctrl-C: on a terminal, ask whether to stop the job; otherwise detach."""
    import os

    if os.isatty(0) and os.isatty(2):  # the prompt goes to stderr, the answer comes from stdin
        try:
            answer = input(f"\nStop job {job.id}? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer in ("y", "yes"):
            _note(f"Job {job.id} is {job.stop()}.")
            return
    _note(f"\nDetached; job {job.id} keeps running. Follow it: rayfleet jobs logs {job.id} --follow; "
          f"stop it: rayfleet jobs stop {job.id}")


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(submit)
