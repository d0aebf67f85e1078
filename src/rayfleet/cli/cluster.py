"""``rayfleet up``, ``down`` and ``status``."""

from __future__ import annotations

import requests
import typer
from rich.table import Table

from rayfleet.cli._common import console, target_for
from rayfleet.cluster import local
from rayfleet.cluster.state import LocalPorts, state_dir
from rayfleet.errors import ClusterError, ClusterNotRunning
from rayfleet.serve.deploy import list_services

__all__ = ["register"]

_FLEET_LATER = ("On-prem fleets (fleet.yaml) are not supported by this version; "
                "use --local for a cluster on this machine.")


def _require_local(is_local: bool) -> None:
    if not is_local:
        raise ClusterError("Only local clusters are supported: the --local flag is required.", hint=_FLEET_LATER)


def up(
    is_local: bool = typer.Option(False, "--local", help="A single-node cluster on this machine."),
    num_cpus: int = typer.Option(None, "--num-cpus", min=1, help="CPUs Ray may use (default: all)."),
    port: int = typer.Option(6379, "--port", help="GCS port (the cluster address)."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="Dashboard and Jobs API port."),
    serve_port: int = typer.Option(8000, "--serve-port", help="HTTP port of the services."),
    client_port: int = typer.Option(10001, "--client-port", help="Ray Client server port."),
    agent_port: int = typer.Option(52365, "--agent-port", help="Dashboard agent HTTP port."),
    min_worker_port: int = typer.Option(10002, "--min-worker-port", help="Lowest worker port."),
    max_worker_port: int = typer.Option(19999, "--max-worker-port", help="Highest worker port."),
    dashboard_host: str = typer.Option("127.0.0.1", "--dashboard-host",
                                       help="Address the dashboard binds to; 0.0.0.0 exposes it to the network."),
    serve_host: str = typer.Option("127.0.0.1", "--serve-host",
                                   help="Address the services bind to; 0.0.0.0 exposes them to the network."),
) -> None:
    """Start a Ray cluster (token auth on). Running it again while up changes nothing.

    Example: rayfleet up --local --num-cpus 2
    """
    _require_local(is_local)
    ports = LocalPorts(gcs=port, dashboard=dashboard_port, serve=serve_port, client_server=client_port,
                       dashboard_agent=agent_port, min_worker=min_worker_port, max_worker=max_worker_port)
    with console.status("Starting Ray (head node) ..."):
        result = local.start(ports=ports, num_cpus=num_cpus, dashboard_host=dashboard_host,
                             serve_host=serve_host)
    c = result.cluster
    console.print("Cluster already running." if result.already_running else "Cluster started.")
    if "0.0.0.0" in (dashboard_host, serve_host):
        console.print("warning: binding to 0.0.0.0 exposes the cluster to the network; "
                      "token auth is on, but consider a firewall.", style="yellow")
    console.print(f"  address:    {c.gcs_address}")
    console.print(f"  dashboard:  {c.dashboard_url}")
    console.print(f"  services:   {c.serve_url}")
    console.print(f"  auth token: {c.token_path} (Ray token auth is on)")
    console.print("Next: rayfleet serve examples/translate.yaml")


def down(
    is_local: bool = typer.Option(False, "--local", help="Stop the cluster on this machine."),
) -> None:
    """Stop every process of the cluster; leaves no Ray process of it behind.

    Example: rayfleet down --local
    """
    _require_local(is_local)
    with console.status("Stopping Ray ..."):
        stopped = local.stop()
    if stopped is None:
        console.print(f"No local cluster is running (state dir {state_dir()}).")
    else:
        console.print(f"Stopped the local cluster {stopped.gcs_address}; no Ray process of it is left.")


def _nodes(c) -> list[dict]:
    r = requests.get(f"{c.dashboard_url}/api/v0/nodes", params={"detail": "true", "limit": 1000},
                     headers=local.auth_headers(c), timeout=10)
    if r.status_code != 200:
        raise ClusterError(f"The dashboard answered {r.status_code} when asked for nodes: {r.text[:200]}")
    return r.json().get("data", {}).get("result", {}).get("result", [])


def status() -> None:
    """Show the cluster: address, nodes and their resources, services and URLs.

    Example: rayfleet status
    """
    try:
        c = local.current()
    except ClusterNotRunning as e:
        raise ClusterNotRunning(e.message, hint="Start one with: rayfleet up --local") from None
    console.print(f"Local cluster {c.gcs_address} — dashboard {c.dashboard_url} — token auth on")
    table = Table("node", "state", "CPU", "GPU", "memory (GiB)", "object store (GiB)", title="Nodes")
    for n in _nodes(c):
        res = n.get("resources_total") or {}
        table.add_row(
            f"{n.get('node_ip')}{' (head)' if n.get('is_head_node') else ''}", n.get("state", "?"),
            f"{res.get('CPU', 0):g}", f"{res.get('GPU', 0):g}",
            f"{res.get('memory', 0) / 2**30:.1f}", f"{res.get('object_store_memory', 0) / 2**30:.1f}")
    console.print(table)
    services = list_services(target_for(c))
    if not services:
        console.print("Services: none (deploy one with: rayfleet serve examples/translate.yaml)")
        return
    st = Table("service", "status", "replicas", "model", "URL", title="Services")
    for s in services:
        st.add_row(s.name, s.status, str(s.replicas), s.model, s.url)
    console.print(st)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
