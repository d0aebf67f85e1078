"""Which cluster a command or a ``rayfleet.connect()`` works on, and how to reach it.

The rule, decided here once: the fleet named by ``fleet`` (``-f FILE``) when given;
otherwise the local cluster when one runs; otherwise ``./fleet.yaml`` when it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayfleet.cluster import fleet as fleet_mod
from rayfleet.cluster import local
from rayfleet.cluster.state import LocalCluster, reachable_host
from rayfleet.config.fleet import FleetSpec
from rayfleet.config.loader import load_model
from rayfleet.errors import ClusterNotRunning, ConfigError
from rayfleet.serve.deploy import ServeTarget

__all__ = ["Target", "DEFAULT_FLEET", "load_fleet", "target_for", "fleet_target", "resolve_target",
           "registry_storage"]

DEFAULT_FLEET = Path("fleet.yaml")


@dataclass(frozen=True)
class Target:
    """The cluster a command works on, and where its services are deployed."""

    description: str
    serve: ServeTarget
    local: LocalCluster | None = None
    fleet: FleetSpec | None = None


def load_fleet(path: str | Path | None) -> FleetSpec:
    path = Path(path) if path is not None else DEFAULT_FLEET
    if not path.exists():
        raise ConfigError(f"{path}: no such file.",
                          hint="Write one with 'rayfleet init --head HOST --worker HOST ...', "
                               "pass -f FILE, or use --local for a cluster on this machine.")
    return load_model(FleetSpec, path)


def target_for(cluster: LocalCluster) -> ServeTarget:
    return ServeTarget(
        dashboard_url=cluster.dashboard_url,
        headers=local.auth_headers(cluster),
        serve_host=cluster.serve_host,
        serve_port=cluster.ports.serve,
        public_host=reachable_host(cluster.serve_host),
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
        public_host=reachable_host(host, wildcard=fleet.head.host),
        proxy_location="HeadOnly" if reachable_host(host) == host else "EveryNode",
    )


def resolve_target(fleet_file: str | Path | None) -> Target:
    """``fleet_file`` → that fleet; else the running local cluster; else ./fleet.yaml."""
    if fleet_file is None:
        try:
            c = local.current()
            return Target(f"local cluster {c.gcs_address}", target_for(c), local=c)
        except ClusterNotRunning:
            if not DEFAULT_FLEET.exists():
                raise
    spec = load_fleet(fleet_file)
    return Target(f"fleet '{spec.name}' (head {spec.head.host})", fleet_target(spec), fleet=spec)


def registry_storage(fleet_file: str | Path | None) -> Path | None:
    """Where the targeted cluster's shared storage lives (default registry, runs, app packages): a
    fleet's storage.path, or None ($RAYFLEET_HOME/storage) for the local cluster.

    The fleet is the one of ``fleet_file``; without it, none while a local cluster runs, else
    ./fleet.yaml when it exists (the rule above). Needs no running cluster: the storage is read
    on this machine.
    """
    from rayfleet.registry.refs import fleet_storage

    if fleet_file is None:
        try:
            local.current()
            return None
        except ClusterNotRunning:
            if not DEFAULT_FLEET.exists():
                return None
    return fleet_storage(load_fleet(fleet_file))
