"""Shared bits of the CLI: the console, and how a command finds its cluster.

A command works on the fleet named by ``-f FILE`` when given; otherwise on the
local cluster when one runs; otherwise on ``./fleet.yaml`` when it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import Progress, ProgressColumn

from rayfleet.cluster import fleet as fleet_mod
from rayfleet.cluster import local
from rayfleet.cluster.state import LocalCluster
from rayfleet.config.fleet import FleetSpec
from rayfleet.config.loader import load_model
from rayfleet.errors import ClusterNotRunning, ConfigError
from rayfleet.serve.deploy import ServeTarget

__all__ = ["console", "err_console", "FLEET_OPTION", "JobProgress", "Target", "target_for", "fleet_target",
           "resolve_target", "load_fleet", "local_target", "DEFAULT_FLEET"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_FLEET = Path("fleet.yaml")
FLEET_OPTION = typer.Option(None, "-f", "--file", help="fleet.yaml of the cluster (default: ./fleet.yaml).")


@dataclass(frozen=True)
class Target:
    """The cluster a command works on, and where its services are deployed."""

    description: str
    serve: ServeTarget
    local: LocalCluster | None = None
    fleet: FleetSpec | None = None


def load_fleet(path: Optional[Path]) -> FleetSpec:
    path = path or DEFAULT_FLEET
    if not path.exists():
        raise ConfigError(f"{path}: no such file.",
                          hint="Write one with 'rayfleet init --head HOST --worker HOST ...', "
                               "pass -f FILE, or use --local for a cluster on this machine.")
    return load_model(FleetSpec, path)


def target_for(cluster: LocalCluster) -> ServeTarget:
    public = "127.0.0.1" if cluster.serve_host in ("0.0.0.0", "") else cluster.serve_host
    return ServeTarget(
        dashboard_url=cluster.dashboard_url,
        headers=local.auth_headers(cluster),
        serve_host=cluster.serve_host,
        serve_port=cluster.ports.serve,
        public_host=public,
    )


def fleet_target(fleet: FleetSpec) -> ServeTarget:
    host = fleet.security.serve_host or fleet.head.host
    return ServeTarget(
        dashboard_url=fleet_mod.dashboard_url(fleet),
        headers=fleet_mod.auth_headers(fleet),
        # Serve's HAProxy mode (cluster/serving.py) binds HAProxy and every replica's own
        # HTTP server to this address, and HAProxy reaches a replica on its own node at
        # 127.0.0.1 and on the others at their address: only all interfaces works.
        serve_host="0.0.0.0",
        serve_port=fleet.ports.serve,
        public_host=fleet.head.host if host == "0.0.0.0" else host,
        proxy_location="EveryNode" if host == "0.0.0.0" else "HeadOnly",
    )


def resolve_target(fleet_file: Optional[Path]) -> Target:
    """-f FILE → that fleet; else the running local cluster; else ./fleet.yaml."""
    if fleet_file is None:
        try:
            c = local.current()
            return Target(f"local cluster {c.gcs_address}", target_for(c), local=c)
        except ClusterNotRunning:
            if not DEFAULT_FLEET.exists():
                raise
    spec = load_fleet(fleet_file)
    return Target(f"fleet '{spec.name}' (head {spec.head.host})", fleet_target(spec), fleet=spec)


def local_target() -> tuple[LocalCluster, ServeTarget]:
    """The running local cluster and its Serve target (ClusterNotRunning otherwise)."""
    cluster = local.current()
    return cluster, target_for(cluster)


class JobProgress:
    """A followed job's live display: a spinner until the job starts, then a progress bar.

    Subclasses give the bar's columns and turn events into updates (``__call__``);
    ``start_bar`` switches from the spinner to the bar.
    """

    def __init__(self, quiet: bool, *columns: ProgressColumn):
        self.quiet = quiet
        self.progress = Progress(*columns, console=console, transient=False, disable=quiet)
        self.task = None
        self.status = console.status("Submitted; waiting for the job to start ...")

    def __enter__(self):
        if not self.quiet:
            self.status.start()
        return self

    def __exit__(self, *exc):
        self.status.stop()
        self.progress.stop()

    def start_bar(self, description: str, **fields) -> None:
        self.status.stop()
        self.progress.start()
        self.task = self.progress.add_task(description, **fields)

    def phase(self, ev: dict) -> None:
        """A ``phase`` event before the bar: shown on the spinner."""
        if self.task is None and not self.quiet:
            self.status.update(f"{ev['name'].capitalize()} ...")
