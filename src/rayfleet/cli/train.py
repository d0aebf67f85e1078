"""``rayfleet train``, ``tune``, ``jobs`` and ``models``: options and printing over ``rayfleet.api``."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from rayfleet.cli._common import FLEET_OPTION, JobProgress, console, print_table
from rayfleet.jobs import events
from rayfleet.jobs.submit import JobsClient

__all__ = ["register"]

_METRICS = ("exact_match", "bleu", "chrf", "loss")
_REGISTRY_HELP = ("Registry URI (default: $RAYFLEET_REGISTRY_URI, else SQLite in the storage path: the fleet's "
                  "storage.path with -f, else $RAYFLEET_HOME/storage).")


def _jobs_client(fleet_file: Optional[Path]) -> JobsClient:
    """The Jobs API of the fleet (-f), else the local cluster, else ./fleet.yaml."""
    import rayfleet

    return rayfleet.connect(fleet_file).jobs_client


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for k in _METRICS:
        if k in metrics and metrics[k] is not None:
            v = float(metrics[k])
            parts.append(f"{k} {v:.3f}" if k in ("exact_match", "loss") else f"{k} {v:.1f}")
    return ", ".join(parts) or "-"


class _Follower(JobProgress):
    """Turns job events (``events.TrainEvent``) into a live progress bar and a few printed lines."""

    def __init__(self, quiet: bool, guard=None, resuming: bool = False):
        super().__init__(quiet, TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                         TextColumn("step"), MofNCompleteColumn(),
                         TextColumn("loss {task.fields[loss]}  {task.fields[sps]} samples/s"), TextColumn("ETA"),
                         TimeRemainingColumn(), guard=guard)
        self._last: events.TrainProgress | None = None
        self.resuming = resuming          # `train --resume`: the first start comes from the run's checkpoint
        self._started = False        # a TrainStart was seen

    def describe(self) -> str | None:
        ev = self._last
        if ev is None:
            return None
        return (f"step {ev.step}/{ev.total_steps or '?'} (epoch {ev.epoch}/{ev.epochs}): "
                f"loss {ev.loss:.3f}, {ev.samples_per_s:.0f} samples/s")

    def _ensure_task(self, total_steps: int) -> None:
        if self.task is None:
            self.start_bar("train", total=total_steps, epoch=1, epochs="?", loss="-", sps="-")

    def __call__(self, ev: events.Event) -> None:
        if isinstance(ev, events.Phase):
            self.phase(ev)
        elif isinstance(ev, events.TrainStart):
            first, self._started = not self._started, True
            if ev.resumed_from is not None and first and self.resuming:
                console.print(f"Resuming from the run's checkpoint at step {ev.resumed_from}.")
            elif ev.resumed_from is not None:
                console.print(f"Worker group restarted: resuming from the checkpoint at step {ev.resumed_from}.")
            elif ev.nodes:
                nodes = sorted(set(ev.nodes))
                self.line(f"Training with {ev.workers} worker(s) on {len(nodes)} node(s): {', '.join(nodes)}")
            self.progressed(started=True)
            self._ensure_task(ev.total_steps)
            self.progress.update(self.task, total=ev.total_steps, completed=ev.resumed_from or 0)
        elif isinstance(ev, events.TrainProgress):
            self._last = ev
            self.progressed(started=True)
            self._ensure_task(ev.total_steps)
            self.progress.update(self.task, completed=ev.step, epoch=ev.epoch, epochs=ev.epochs,
                                 loss=f"{ev.loss:.3f}", sps=f"{ev.samples_per_s:.0f}")
        elif isinstance(ev, events.Eval):
            self.progressed(started=True)
            self.line(f"step {ev.step}: {_fmt_metrics(ev.model_dump())}")
        elif isinstance(ev, events.Warning):
            console.print(f"warning: {ev.message}", style="yellow", markup=False)
        elif isinstance(ev, events.Trial):
            self.progressed()
            self.line(f"trial {ev.trial}: {ev.config} -> {_fmt_metrics(ev.metrics)}")


def _print_result(result: events.TrainResult) -> None:
    console.print(f"Evaluation: {_fmt_metrics(result.metrics)}")
    if result.model:
        aliases = f" (alias {', '.join(result.aliases)})" if result.aliases else ""
        console.print(f"Registered {result.model} version {result.version}{aliases}: "
                      f"registry://{result.model}/{result.version}")
    if result.best_config:
        console.print(f"Best trial config: {result.best_config}")


def _run(spec_file: Path, mode: str, samples: Optional[int], detach: bool, quiet: bool,
         fleet_file: Optional[Path], num_workers: Optional[int] = None,
         unplaceable_timeout: float = 120, resume: Optional[str] = None) -> None:
    import rayfleet

    cluster = rayfleet.connect(fleet_file)
    run = cluster.train(spec_file, mode=mode, samples=samples, num_workers=num_workers,
                        workers_fix="--num-workers {n}", resume=resume)
    if run.note:
        console.print(run.note, markup=False)
    console.print(f"Submitted job {run.id} (run dir {run.run_dir}).")
    if detach:
        console.print(f"Follow it with: rayfleet jobs logs {run.id} --follow")
        return
    try:
        with _Follower(quiet, run.guard(timeout_s=unplaceable_timeout), resuming=resume is not None) as follower:
            result = run.wait(on_event=follower, on_poll=follower.tick, on_log=follower.log_line)
    except KeyboardInterrupt:
        console.print(f"\nDetached; job {run.id} keeps running. Follow it: rayfleet jobs logs "
                      f"{run.id} --follow; stop it: rayfleet jobs stop {run.id}")
        return
    _print_result(result)


def train(
    spec_file: Path = typer.Argument(..., metavar="JOB.yaml", help="Job spec (see examples/finetune-tiny.yaml)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Submit and return at once."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; print only the result."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", min=1,
                                              help="Override scaling.num_workers of the spec."),
    unplaceable_timeout: float = typer.Option(
        120, "--unplaceable-timeout", min=1,
        help="Stop the job when it made no progress this many seconds and the cluster can't place it."),
    resume: Optional[str] = typer.Option(
        None, "--resume", metavar="RUN_ID",
        help="Run again a failed run of this job (its id, as 'rayfleet train' printed it) from its latest "
             "checkpoint, with its own settings; registered once, when it finishes."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Submit a training job; show its progress, metrics and the registered version. Ctrl-C detaches.

    A job that needs more CPUs/GPUs than the cluster has is refused before it is submitted;
    one that waits for busy resources says so. Without a terminal, progress is printed as
    plain lines (phases, evaluations, a heartbeat at least every 30 s). A run that failed
    (its head restarted, a node lost) resumes from its last checkpoint with --resume RUN_ID.

    Example: rayfleet train examples/finetune-tiny.yaml --num-workers 1
    """
    if resume is not None and num_workers is not None:
        raise typer.BadParameter("--resume runs the run with its own settings: leave out --num-workers")
    _run(spec_file, "train", None, detach, quiet, fleet_file, num_workers, unplaceable_timeout, resume)


def tune(
    spec_file: Path = typer.Argument(..., metavar="JOB.yaml", help="Job spec with a 'search:' block."),
    samples: int = typer.Option(4, "--samples", "-n", min=1, help="Trials to run."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Submit and return at once."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; print only the result."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", min=1,
                                              help="Override scaling.num_workers of the spec (per trial)."),
    unplaceable_timeout: float = typer.Option(
        120, "--unplaceable-timeout", min=1,
        help="Stop the job when it made no progress this many seconds and the cluster can't place it."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Search the 'search:' space with Ray Tune (ASHA); register the best trial. Ctrl-C detaches.

    Example: rayfleet tune examples/finetune-tiny.yaml --samples 4
    """
    _run(spec_file, "tune", samples, detach, quiet, fleet_file, num_workers, unplaceable_timeout)


jobs_app = typer.Typer(help="List jobs, show their logs, stop them.\n\nExample: rayfleet jobs; rayfleet jobs logs ID",
                       no_args_is_help=False, rich_markup_mode=None)


def _when(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


@jobs_app.callback(invoke_without_command=True)
def jobs(ctx: typer.Context, fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """List jobs: id, kind, name, status, start and end.

    Example: rayfleet jobs
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = fleet_file
        return
    rows = _jobs_client(fleet_file).list()
    if not rows:
        console.print("No jobs. Start one with: rayfleet train examples/finetune-tiny.yaml")
        return
    table = Table("id", "kind", "name", "status", "started", "ended")
    for j in rows:
        table.add_row(j.id, j.kind, j.name, j.status, _when(j.start_ms), _when(j.end_ms))
    print_table(table)


@jobs_app.command("logs")
def jobs_logs(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (see: rayfleet jobs)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
) -> None:
    """Print a job's log (driver and workers).

    Example: rayfleet jobs logs en-fr-tiny-20250101-120000-ab12 --follow
    """
    client = _jobs_client(ctx.obj)
    if not follow:
        console.print(client.logs(job_id), markup=False, end="")
        return
    try:
        for line in client.follow(job_id):
            console.print(line, markup=False)
    except KeyboardInterrupt:
        console.print(f"\nStopped following; job {job_id} keeps running.")


@jobs_app.command("stop")
def jobs_stop(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id (see: rayfleet jobs).")) -> None:
    """Stop a running job.

    Example: rayfleet jobs stop en-fr-tiny-20250101-120000-ab12
    """
    client = _jobs_client(ctx.obj)
    if client.stop(job_id):
        info = client.wait(job_id, timeout_s=60)
        console.print(f"Job {job_id} is {info.status}.")
    else:
        console.print(f"Job {job_id} was not running ({client.info(job_id).status}).")


models_app = typer.Typer(help="Registered models and versions; promote a version with an alias.\n\n"
                              "Example: rayfleet models; rayfleet models promote en-fr 3 --alias production",
                         no_args_is_help=False, rich_markup_mode=None)


def _registry(uri: Optional[str], fleet_file: Optional[Path]):
    import os

    from rayfleet.registry.refs import REGISTRY_ENV
    from rayfleet.registry.store import Registry

    from rayfleet.cluster.target import registry_storage

    if uri or os.environ.get(REGISTRY_ENV):
        return Registry(uri)
    return Registry(storage=registry_storage(fleet_file))


def _models_obj(ctx: typer.Context, registry: Optional[str], fleet_file: Optional[Path]):
    """The registry of a models subcommand: its own --registry/-f, else the group's."""
    group_registry, group_fleet = ctx.obj or (None, None)
    return _registry(registry or group_registry, fleet_file or group_fleet)


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    name: Optional[str] = typer.Option(None, "--name", help="Only this model."),
    registry: Optional[str] = typer.Option(None, "--registry", help=_REGISTRY_HELP),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """List registered models and their versions with metrics and aliases.

    Example: rayfleet models -f fleet.yaml
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = (registry, fleet_file)
        return
    rows = [m for m in _registry(registry, fleet_file).list_models() if name is None or m.name == name]
    if not rows:
        console.print("No registered models. Train one with: rayfleet train examples/finetune-tiny.yaml")
        return
    table = Table("model", "version", "aliases", "exact_match", "bleu", "chrf", "created", "ref")
    for m in rows:
        for v in m.versions:
            mt = v.metrics
            table.add_row(m.name, v.version, ", ".join(v.aliases) or "-",
                          *(f"{mt[k]:.3f}" if k == "exact_match" and k in mt else
                            (f"{mt[k]:.1f}" if k in mt else "-") for k in ("exact_match", "bleu", "chrf")),
                          _when(v.created_ms), f"registry://{m.name}/{v.version}")
    print_table(table)


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version number."),
    registry: Optional[str] = typer.Option(None, "--registry", help=_REGISTRY_HELP),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Show one version: metrics, aliases, run, where its files are.

    Example: rayfleet models show en-fr 3
    """
    v = _models_obj(ctx, registry, fleet_file).show(name, version)
    console.print(f"{v.name} version {v.version}  (registry://{v.name}/{v.version})", markup=False)
    console.print(f"  aliases:  {', '.join(v.aliases) or '-'}", markup=False)
    console.print(f"  created:  {_when(v.created_ms)}", markup=False)
    console.print(f"  metrics:  {', '.join(f'{k} {val:g}' for k, val in sorted(v.metrics.items())) or '-'}",
                  markup=False)
    console.print(f"  run:      {v.run_id or '-'}", markup=False)
    console.print(f"  files:    {v.source}", markup=False)


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version number."),
    alias: str = typer.Option("production", "--alias", help="Alias to point at this version."),
    registry: Optional[str] = typer.Option(None, "--registry", help=_REGISTRY_HELP),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Point an alias (default: production) at a version; services can use registry://NAME@ALIAS.

    Example: rayfleet models promote en-fr 3 --alias production
    """
    v = _models_obj(ctx, registry, fleet_file).promote(name, version, alias)
    console.print(f"{v.name}@{alias} -> version {v.version} (aliases now: {', '.join(v.aliases)})")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(tune)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
