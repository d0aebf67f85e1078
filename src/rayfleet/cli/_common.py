"""Shared bits of the CLI: the consoles, the -f option, progress display, the check table.

Which cluster a command works on is decided in the library (``rayfleet.cluster.target``):
the fleet of ``-f FILE``, else the running local cluster, else ``./fleet.yaml``.
"""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.progress import Progress, ProgressColumn

from rayfleet.cluster.target import fleet_target, load_fleet
from rayfleet.jobs.submit import quiet_ray_logs

__all__ = ["console", "err_console", "FLEET_OPTION", "JobProgress", "fleet_target", "load_fleet", "quiet_ray_logs",
           "print_report", "print_table", "ACCEPT_NEW_HOSTS", "pin_new_hosts"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

FLEET_OPTION = typer.Option(None, "-f", "--file", help="fleet.yaml of the cluster (default: ./fleet.yaml).")


ACCEPT_NEW_HOSTS = typer.Option(
    False, "--accept-new-hosts",
    help="Pin the SSH keys of hosts met for the first time without asking (for scripts; compare the "
         "printed fingerprints with the hosts' own). On a terminal you are asked instead.")


def pin_new_hosts(spec, accept: bool) -> None:
    """Meet the fleet's hosts whose SSH keys are not pinned yet: print their fingerprints; pin them when
    ``accept``, or when the user says yes on a terminal; else stop with the fix (cluster/hostkeys.py)."""
    import sys

    from rayfleet.cluster import fleet as fleet_mod
    from rayfleet.cluster import hostkeys
    from rayfleet.errors import ClusterError

    known = fleet_mod.paths(spec).known_hosts
    new = [h for h in hostkeys.unpinned(spec, known) if h.keys]   # one that didn't answer: check says why
    if not new:
        return
    for h in new:
        console.print(f"New host {h.label}: SSH key {', '.join(h.fingerprints)}", markup=False)
    if not accept and console.is_terminal and sys.stdin.isatty():
        accept = typer.confirm(f"Pin {'this key' if len(new) == 1 else 'these keys'} for fleet '{spec.name}' "
                               "(compare with the hosts' own first)?", default=False)
    if not accept:
        raise ClusterError(
            f"The SSH key of {', '.join(h.label for h in new)} is not pinned yet; nothing was sent to "
            f"{'it' if len(new) == 1 else 'them'}.",
            hint="Compare the fingerprints above with the hosts' own (ssh-keygen -lf "
                 "/etc/ssh/ssh_host_ed25519_key.pub on each), then run again with --accept-new-hosts "
                 "(or on a terminal, and answer yes).")
    hostkeys.pin(known, new)
    console.print(f"Pinned in {known}.", markup=False)


def print_table(table) -> None:
    """A Rich table on stdout; where stdout is not a terminal (a log, a pipe, CI) as wide as its
    content needs, so no cell (a URL, a path) is cut or folded at 80 columns."""
    if console.is_terminal:
        console.print(table)
        return
    width = max(console.width, console.measure(table, options=console.options.update_width(10_000)).maximum)
    Console(width=width, highlight=False).print(table)   # print(width=) can't go past the console's width


def print_report(report) -> None:
    """The table of ``rayfleet check`` (a preflight ``Report``) and one line per failure."""
    from rich.table import Table

    from rayfleet.cluster.preflight import CHECKS

    table = Table("host", *CHECKS, title="rayfleet check")
    for host in report.hosts:
        cells = []
        for check in CHECKS:
            r = report.get(host, check)
            if r is None or r.ok is None:
                cells.append("-")
            else:
                cells.append("✓" if r.ok else "✗")
        table.add_row(report.labels.get(host, host), *cells)
    print_table(table)
    for r in report.failures():
        line = f"✗ {r.host} {r.check}: {r.detail}"
        if r.fix:
            line += f" — fix: {r.fix}"
        console.print(line, markup=False, soft_wrap=True)   # one line each, whatever the width


class JobProgress:
    """A followed job's display: a spinner until the job starts, then a progress bar.

    When stdout is not a terminal (CI, nohup, a pipe) there is no live display: every
    phase, every evaluation and a heartbeat (``describe()``: step and rate) at least every
    ``HEARTBEAT_S`` are printed as plain lines instead, so a job is never silent.

    Subclasses give the bar's columns, turn events into updates (``__call__``) and say
    where the job is (``describe``); ``start_bar`` switches from the spinner to the bar.
    ``guard`` (a ``StallGuard``) reports waiting for resources and stops a job whose
    demand can't be placed; ``tick`` runs it and the heartbeat, once per poll.
    """

    HEARTBEAT_S = 30.0

    def __init__(self, quiet: bool, *columns: ProgressColumn, guard=None):
        self.quiet = quiet
        self.plain = not quiet and not console.is_terminal
        self.progress = Progress(*columns, console=console, transient=False, disable=quiet or self.plain)
        self.task = None
        self.status = console.status("Submitted; waiting for the job to start ...")
        self.guard = guard
        self._last_line = time.monotonic()
        self._phase: str | None = None   # the last phase, for the heartbeat until there is progress to describe

    def __enter__(self):
        if not self.quiet and not self.plain:
            self.status.start()
        return self

    def __exit__(self, *exc):
        self.status.stop()
        self.progress.stop()

    def line(self, text: str, **kw) -> None:
        """A printed line (also what resets the heartbeat)."""
        console.print(text, markup=False, **kw)
        self._last_line = time.monotonic()

    def start_bar(self, description: str, **fields) -> None:
        self.status.stop()
        if not self.plain:
            self.progress.start()
        self.task = self.progress.add_task(description, **fields)

    def phase(self, ev) -> None:
        """A ``Phase`` event: on the spinner, or a printed line without a terminal."""
        if self.guard is not None and ev.waits_for_resources:
            self.guard.placing = True
        self._phase = ev.name
        if self.plain:
            self.line(f"{ev.name.capitalize()} ...")
        elif self.task is None and not self.quiet:
            self.status.update(f"{ev.name.capitalize()} ...")

    def describe(self) -> str | None:
        """Where the job is, for the heartbeat (None: nothing to say yet)."""
        return None

    def progressed(self, *, started: bool = False) -> None:
        """A progress event: feeds the guard; without a terminal, a heartbeat line now and then."""
        if self.guard is not None:
            self.guard.progressed(started=started)
        if self.plain and time.monotonic() - self._last_line >= self.HEARTBEAT_S / 3:
            text = self.describe()
            if text:
                self.line(text)

    def tick(self) -> None:
        """Once per poll of the job: waiting lines, the guard, and the heartbeat."""
        if self.guard is not None:
            waiting = self.guard.tick()  # raises JobError when the job can't be placed
            if waiting:
                if self.plain:
                    self.line(waiting)
                elif not self.quiet and self.task is None:
                    self.status.update(waiting)
        if self.plain and time.monotonic() - self._last_line >= self.HEARTBEAT_S:
            self.line(self.describe() or (f"still {self._phase} ..." if self._phase
                                          else "still waiting for the job to start ..."))

    def log_line(self, line: str) -> None:
        if self.guard is not None:
            self.guard.log_line(line)
