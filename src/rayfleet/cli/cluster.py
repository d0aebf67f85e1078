"""``rayfleet up``, ``down`` and ``status``."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rayfleet.cli._common import (ACCEPT_NEW_HOSTS, FLEET_OPTION, console, err_console, fleet_target, load_fleet,
                                  pin_new_hosts, print_report, print_table)
from rayfleet.cluster import fleet as fleet_mod
from rayfleet.cluster import local
from rayfleet.cluster.dashboard import list_nodes
from rayfleet.cluster.preflight import run_checks
from rayfleet.cluster.state import LocalPorts, state_dir
from rayfleet.errors import ClusterError, JobError, ServeError

__all__ = ["register"]


def _next_serve() -> str:
    """The serve command to suggest after ``up``: the repo's example where it is at hand, else a model."""
    if Path("examples/translate.yaml").is_file():
        return "rayfleet serve examples/translate.yaml"
    return "rayfleet serve --model MODEL   (a local model directory or a Hugging Face hub id)"

def _fleet_up(fleet_file: Optional[Path], skip_check: bool, accept_new_hosts: bool) -> None:
    spec = load_fleet(fleet_file)
    pin_new_hosts(spec, accept_new_hosts)
    if not skip_check:
        with console.status(f"Checking {len(spec.nodes)} hosts ..."):
            # On a running fleet (a changed fleet.yaml, a node to bring back) its Ray holds its ports.
            running = frozenset(fleet_mod.alive_ips(spec))
            report = run_checks(spec, fleet_mod.paths(spec).known_hosts, running)
        if not report.ok:
            print_report(report)
            raise ClusterError(f"{len(report.failures())} check(s) failed; the cluster was not started.",
                               hint="Fix the ✗ rows above (or rerun with --skip-check at your own risk).")
        console.print(f"check: all {len(spec.nodes)} hosts ready")
    with console.status(f"Bringing up fleet '{spec.name}' ...") as st:
        def progress(message: str) -> None:   # a line each (also without a terminal), and the spinner
            console.print(f"  {message}", markup=False)
            st.update(f"fleet '{spec.name}': {message}")
        nodes = fleet_mod.up(spec, progress=progress)
    alive = sorted(n["node_ip"] for n in nodes if n.get("state") == "ALIVE")
    console.print(f"Fleet '{spec.name}' is up: {len(alive)} node(s) alive: {', '.join(alive)}")
    console.print(f"  address:    {spec.head.address}:{spec.ports.gcs}"
                  + (f" ({spec.head.host})" if spec.head.host != spec.head.address else ""))
    console.print(f"  dashboard:  {fleet_mod.dashboard_label(spec)}")
    console.print(f"  services:   {fleet_target(spec).url('/')}")
    auth = "on (token in " + str(fleet_mod.paths(spec).token) + ")" if spec.auth_enabled else "DISABLED"
    console.print(f"  auth:       {auth}")
    console.print("  tls:        " + ("on (Ray's gRPC between nodes; 'rayfleet certs' lists the certificates)"
                                      if spec.security.tls else "OFF (security.tls: false): cluster traffic in clear text"))
    console.print(f"  head:       {_recovery_label(spec)}")
    restarts = fleet_mod.head_restarts(spec)
    if restarts is not None and (line := _supervisor_line(restarts["supervised"])):
        console.print("  " + line.replace("Head supervisor: ", "supervisor: "), markup=False)
    m = spec.monitoring
    console.print("  monitoring: " + (f"Prometheus on the head's 127.0.0.1:{m.port}, keeps {m.retention} "
                                      f"('rayfleet metrics url -f {fleet_file or 'fleet.yaml'}' opens it)"
                                      if m.enabled else "off (monitoring: true in fleet.yaml runs Prometheus)"),
                  markup=False)
    _reapply(fleet_file)
    console.print(f"Next: {_next_serve()} -f {fleet_file or 'fleet.yaml'}")


def _recovery_label(spec) -> str:
    """Where a fleet keeps its state for a dead head (head_recovery), in words."""
    from rayfleet.cluster import redis_store
    from rayfleet.cluster.launcher import gcs_store

    hr = spec.head_recovery
    if hr.store == "off":
        return "not supervised (head_recovery: off): a dead head stays down until 'rayfleet up'"
    if hr.store == "rocksdb":
        return f"supervised; the cluster's state in RocksDB on its disk ({gcs_store(spec)})"
    n = redis_store.node(spec)
    if n is None:
        return f"supervised; the cluster's state in your Redis {hr.redis.url}"
    url = redis_store.plan(spec, "")["url"]
    return (f"supervised; the cluster's state in rayfleet's Redis on {n.label}, port {hr.redis.port}"
            + (" (TLS)" if url.startswith("rediss") else ""))


def _reapply(fleet_file: Optional[Path]) -> None:
    """The services rayfleet deployed on this cluster and that it lost (its head started afresh, without a
    store): deployed again, and said so."""
    import rayfleet

    cluster = rayfleet.connect(fleet_file)
    with console.status("Checking the services rayfleet deployed here ...") as st:
        done = cluster.reapply_services(progress=lambda m: st.update(m))
    for name, error in done.items():
        if error is None:
            console.print(f"Re-applied service {name}: the cluster had lost it (its head started without its "
                          "state), now deployed again from its spec.")
        else:
            err_console.print(f"warning: could not re-apply service {name}: {error}", style="yellow", markup=False)


def up(
    is_local: bool = typer.Option(False, "--local", help="A single-node cluster on this machine."),
    fleet_file: Optional[Path] = FLEET_OPTION,
    skip_check: bool = typer.Option(False, "--skip-check", help="Fleets: don't run 'rayfleet check' first."),
    accept_new_hosts: bool = ACCEPT_NEW_HOSTS,
    num_cpus: int = typer.Option(None, "--num-cpus", min=1, help="CPUs Ray may use (default: all)."),
    port: int = typer.Option(LocalPorts.gcs, "--port", help="GCS port (the cluster address)."),
    dashboard_port: int = typer.Option(LocalPorts.dashboard, "--dashboard-port", help="Dashboard and Jobs API port."),
    serve_port: int = typer.Option(LocalPorts.serve, "--serve-port", help="HTTP port of the services."),
    client_port: int = typer.Option(LocalPorts.client_server, "--client-port", help="Ray Client server port."),
    agent_port: int = typer.Option(LocalPorts.dashboard_agent, "--agent-port", help="Dashboard agent HTTP port."),
    min_worker_port: int = typer.Option(LocalPorts.min_worker, "--min-worker-port", help="Lowest worker port."),
    max_worker_port: int = typer.Option(LocalPorts.max_worker, "--max-worker-port", help="Highest worker port."),
    min_replica_port: int = typer.Option(LocalPorts.min_replica, "--min-replica-port",
                                         help="Lowest port of the Serve replicas' own HTTP/gRPC servers."),
    max_replica_port: int = typer.Option(LocalPorts.max_replica, "--max-replica-port",
                                         help="Highest port of the Serve replicas' own HTTP/gRPC servers."),
    dashboard_host: str = typer.Option("127.0.0.1", "--dashboard-host",
                                       help="Address the dashboard binds to; 0.0.0.0 exposes it to the network."),
    serve_host: str = typer.Option("127.0.0.1", "--serve-host",
                                   help="Address the services bind to; 0.0.0.0 exposes them to the network."),
    head_recovery: bool = typer.Option(True, "--head-recovery/--no-head-recovery",
                                       help="Keep the cluster's state on disk (RocksDB) and start the head again "
                                            "when it dies: services come back by themselves."),
    monitoring: bool = typer.Option(False, "--monitoring",
                                    help="Also run Prometheus (the machine's own 'prometheus' binary) on 127.0.0.1, "
                                         "scraping every metric of the cluster; 'rayfleet metrics url' says where."),
    prometheus_port: int = typer.Option(local.Monitoring.port, "--prometheus-port", min=1, max=65535,
                                        help="Prometheus's port (with --monitoring)."),
    retention: str = typer.Option(local.Monitoring.retention, "--retention",
                                  help="How long Prometheus keeps metrics (with --monitoring), e.g. 7d, 12h."),
    prometheus_path: str = typer.Option(local.Monitoring.binary, "--prometheus-path",
                                        help="The Prometheus binary (with --monitoring): a path, or a name on PATH."),
) -> None:
    """Start a Ray cluster (token auth on): --local on this machine, or the fleet in fleet.yaml.
    Running it again while up changes nothing; a changed fleet.yaml is applied.

    Example: rayfleet up --local --num-cpus 2    |    rayfleet up -f fleet.yaml
    """
    if not is_local:
        _fleet_up(fleet_file, skip_check, accept_new_hosts)
        return
    ports = LocalPorts(gcs=port, dashboard=dashboard_port, serve=serve_port, client_server=client_port,
                       dashboard_agent=agent_port, min_worker=min_worker_port, max_worker=max_worker_port,
                       min_replica=min_replica_port, max_replica=max_replica_port)
    prom = (local.Monitoring(port=prometheus_port, retention=_retention(retention), binary=prometheus_path)
            if monitoring else None)
    with console.status("Starting Ray (head node) ..."):
        result = local.start(ports=ports, num_cpus=num_cpus, dashboard_host=dashboard_host,
                             serve_host=serve_host, head_recovery=head_recovery, monitoring=prom)
    c = result.cluster
    console.print("Cluster already running." if result.already_running else "Cluster started.")
    if "0.0.0.0" in (dashboard_host, serve_host):
        console.print("warning: binding to 0.0.0.0 exposes the cluster to the network; "
                      "token auth is on, but consider a firewall.", style="yellow")
    console.print(f"  address:    {c.gcs_address}")
    console.print(f"  dashboard:  {c.dashboard_url}")
    console.print(f"  services:   {c.serve_url}")
    console.print(f"  auth token: {c.token_path} (Ray token auth is on)")
    console.print("  head:       " + (f"supervised; state kept in {local.gcs_store(state_dir())} (RocksDB)"
                                      if c.head_recovery else "not supervised (--no-head-recovery)"))
    if c.prometheus_url:
        console.print(f"  prometheus: {c.prometheus_url}" + (f" (keeps {retention})" if result.monitoring_started
                                                               else ""))
    if not result.already_running:
        _reapply(None)
    console.print(f"Next: {_next_serve()}")


def _retention(value: str) -> str:
    """A Prometheus duration (7d, 12h, 90m, 1y): checked here, not by a Prometheus that won't start."""
    from rayfleet.config.monitoring import is_duration

    if not is_duration(value):
        raise ClusterError(f"--retention {value!r} is not a duration.", hint="Write it as Prometheus does: 7d, 12h, 2w.")
    return value


def down(
    is_local: bool = typer.Option(False, "--local", help="Stop the cluster on this machine."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Stop every process of the cluster; leaves no Ray process of it behind.

    Example: rayfleet down --local    |    rayfleet down -f fleet.yaml
    """
    if not is_local:
        spec = load_fleet(fleet_file)
        with console.status(f"Stopping fleet '{spec.name}' ...") as st:
            fleet_mod.down(spec, progress=lambda m: st.update(f"fleet '{spec.name}': {m}"))
        shutil.rmtree(fleet_mod.paths(spec).dir / "services", ignore_errors=True)   # stopped on purpose
        console.print(f"Fleet '{spec.name}' is down: no Ray process is left on its {len(spec.nodes)} nodes.")
        return
    with console.status("Stopping Ray ..."):
        stopped = local.stop()
    shutil.rmtree(state_dir() / "services", ignore_errors=True)   # stopped on purpose: the next up has none
    if stopped is None:
        console.print(f"No local cluster is running (state dir {state_dir()}).")
    else:
        console.print(f"Stopped the local cluster {stopped.gcs_address}; no Ray process of it is left.")


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _restarts_line(restarts: dict) -> str:
    if not restarts["count"]:
        return "Head: supervised, never restarted"
    last = restarts["history"][-1]
    when = datetime.datetime.fromtimestamp(last["time"]).strftime("%Y-%m-%d %H:%M:%S")
    tries = last.get("tries", 1)
    if last.get("ok"):
        back = f"back in {last['seconds']:.0f} s" + (f" (at the {_nth(tries)} try of ray start)" if tries > 1 else "")
    else:
        back = f"its start FAILED ({tries} tr{'ies' if tries > 1 else 'y'} so far, tried again; see the supervisor's log)"
    return f"Head: restarted {restarts['count']} time(s); last at {when} ({last['reason']}), {back}"


def _supervisor_line(supervised: dict) -> str | None:
    """What runs the head's supervisor (node_start's record on the head), in words."""
    if supervised.get("by") == "systemd":
        unit = f"systemd, {supervised.get('scope')} unit {supervised.get('name')}"
        if supervised.get("at_boot"):
            return f"Head supervisor: {unit}: starts the head again when it dies, and at boot"
        return f"Head supervisor: {unit}: starts the head again when it dies; NOT at boot: {supervised.get('why_not')}"
    if supervised.get("by") == "watchdog":
        return (f"Head supervisor: rayfleet's watchdog ({supervised.get('why_not') or 'no systemd'}): starts the "
                "head again when it dies, not after a reboot (run 'rayfleet up' then)")
    return None


def status(fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """Show the cluster: address, nodes (alive/dead, CPU/GPU/memory used/total), jobs, services and URLs.

    Example: rayfleet status    |    rayfleet status -f fleet.yaml
    """
    import rayfleet

    cluster = rayfleet.connect(fleet_file)
    target = cluster.target
    if target.local is not None:
        c = target.local
        console.print(f"Local cluster {c.gcs_address} — dashboard {c.dashboard_url} — token auth on")
        if c.head_recovery:
            console.print(_restarts_line(local.head_restarts()))
        if c.prometheus_url:
            console.print(f"Prometheus: {c.prometheus_url} ('rayfleet top' for a live view)", markup=False)
        node_rows = list_nodes(c.dashboard_url, local.auth_headers(c))
    else:
        spec = target.fleet
        auth = "token auth on" if spec.auth_enabled else "AUTH DISABLED"
        console.print(f"Fleet '{spec.name}' {spec.head.address}:{spec.ports.gcs} — dashboard "
                      f"{fleet_mod.dashboard_label(spec)} — {auth}")
        node_rows = fleet_mod.nodes(spec)
        restarts = fleet_mod.head_restarts(spec)
        if restarts is not None:
            console.print(_restarts_line(restarts))
            if line := _supervisor_line(restarts["supervised"]):
                console.print(line, markup=False)
        if spec.monitoring.enabled:
            console.print(f"Prometheus: on the head's 127.0.0.1:{spec.monitoring.port} ('rayfleet metrics url "
                          f"-f {fleet_file or 'fleet.yaml'}' opens it; 'rayfleet top' for a live view)", markup=False)
    alive_ips = {n.get("node_ip") for n in node_rows if n.get("state") == "ALIVE"}
    earlier = [n for n in node_rows if n.get("state") == "DEAD" and n.get("node_ip") in alive_ips]
    node_rows = [n for n in node_rows if n not in earlier]   # a restarted node's earlier incarnations
    table = Table("node", "state", "CPU", "GPU", "memory (GiB)", "object store (GiB)", title="Nodes",
                  caption=f"({len(earlier)} earlier incarnation(s) of restarted nodes not shown)" if earlier else None)
    for n in sorted(node_rows, key=lambda n: (not n.get("is_head_node"), n.get("node_ip", ""), n.get("state", ""))):
        res = n.get("resources_total") or {}
        table.add_row(
            f"{n.get('node_ip')}{' (head)' if n.get('is_head_node') else ''}", n.get("state", "?"),
            f"{res.get('CPU', 0):g}", f"{res.get('GPU', 0):g}",
            f"{res.get('memory', 0) / 2**30:.1f}", f"{res.get('object_store_memory', 0) / 2**30:.1f}")
    print_table(table)
    try:
        jobs = cluster.jobs()
    except JobError as e:   # the nodes and services are still worth showing
        console.print(f"Jobs: {e.message}", markup=False)
        jobs = []
    if jobs:
        jt = Table("job", "kind", "status", "entrypoint", title="Jobs")
        for j in jobs[-10:]:
            jt.add_row(j.id, j.kind, j.status, j.entrypoint[:60])
        print_table(jt)
    try:
        services = cluster.services()
    except ServeError as e:
        console.print(f"Services: {e.message}", markup=False)
        return
    if not services:
        console.print("Services: none (deploy one with: rayfleet serve examples/translate.yaml)")
        return
    st = Table("service", "kind", "status", "replicas", "model / app", "URL", title="Services")
    for s_ in services:
        st.add_row(s_.name, s_.kind, s_.status, str(s_.replicas), s_.model, s_.url)
    print_table(st)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
