"""Shared bits of the CLI: the console and how a command finds its cluster."""

from __future__ import annotations

from rich.console import Console

from rayfleet.cluster import local
from rayfleet.cluster.state import LocalCluster
from rayfleet.serve.deploy import ServeTarget

__all__ = ["console", "err_console", "local_target", "target_for"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def target_for(cluster: LocalCluster) -> ServeTarget:
    public = "127.0.0.1" if cluster.serve_host in ("0.0.0.0", "") else cluster.serve_host
    return ServeTarget(
        dashboard_url=cluster.dashboard_url,
        headers=local.auth_headers(cluster),
        serve_host=cluster.serve_host,
        serve_port=cluster.ports.serve,
        public_host=public,
    )


def local_target() -> tuple[LocalCluster, ServeTarget]:
    """The running local cluster and its Serve target (ClusterNotRunning otherwise)."""
    cluster = local.current()
    return cluster, target_for(cluster)
