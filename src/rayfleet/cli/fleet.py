"""``rayfleet init``, ``check``, ``exec``, ``logs``, ``export-ray-config``, ``dashboard`` and ``certs`` (fleets)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import List, Optional

import typer

from rich.table import Table

from rayfleet.cli._common import (ACCEPT_NEW_HOSTS, FLEET_OPTION, console, load_fleet, pin_new_hosts, print_report,
                                  print_table)
from rayfleet.cluster import fleet as fleet_mod
from rayfleet.cluster.preflight import run_checks
from rayfleet.config.fleet import FleetSpec
from rayfleet.config.loader import validate_data
from rayfleet.errors import ConfigError

__all__ = ["register", "render_fleet_yaml"]


def check(fleet_file: Optional[Path] = FLEET_OPTION, accept_new_hosts: bool = ACCEPT_NEW_HOSTS) -> None:
    """Check every host in parallel: SSH, versions, ports, disk, GPUs, storage, clocks. Exit 1 on any ✗.

    A host met for the first time shows its SSH key's fingerprint first; its key is pinned for the
    fleet when you say yes (or with --accept-new-hosts), and every later connection checks it.

    Example: rayfleet check -f fleet.yaml
    """
    spec = load_fleet(fleet_file)
    pin_new_hosts(spec, accept_new_hosts)
    with console.status(f"Checking {len(spec.nodes)} hosts ..."):
        # Where the fleet's Ray runs, it holds the fleet's ports: not a problem, not checked.
        report = run_checks(spec, fleet_mod.paths(spec).known_hosts, frozenset(fleet_mod.alive_ips(spec)))
    print_report(report)
    if not report.ok:
        raise typer.Exit(1)
    console.print(f"All {len(spec.nodes)} hosts are ready." if len(spec.nodes) > 1 else "The host is ready.")


def install(
    fleet_file: Optional[Path] = FLEET_OPTION,
    host: List[str] = typer.Option([], "--host", help="Only this host (repeat for several; default: every node)."),
    accept_new_hosts: bool = ACCEPT_NEW_HOSTS,
) -> None:
    """Install rayfleet's runtime on the nodes (what 'up' does first): a venv with exactly this
    machine's versions of rayfleet, Ray, torch and the rest (plus runtime.extra_requirements), from a
    wheelhouse built here once, copied over SSH and installed with no index. A node that has it
    already gets nothing. Needs no 'python:' in fleet.yaml (that names a venv of your own instead).

    Example: rayfleet install -f fleet.yaml --host gpu1.lan
    """
    from rayfleet.cluster import runtime

    spec = load_fleet(fleet_file)
    pin_new_hosts(spec, accept_new_hosts)
    nodes = []
    for h in host:
        node = spec.node(h)
        if node is None:
            raise ConfigError(f"Host {h!r} is not in fleet '{spec.name}'.",
                              hint="Hosts: " + ", ".join(n.host for n in spec.nodes))
        nodes.append(node)
    done = runtime.install(spec, nodes or None, progress=lambda m: console.print(m, markup=False))
    console.print(f"Runtime {spec.venv} is on {len(done)} host(s).", markup=False)


def render_fleet_yaml(spec: FleetSpec) -> str:
    workers = "\n".join(f"  - host: {w.host}" for w in spec.workers) or "  []"
    if not spec.workers:
        workers = "  []"
    if spec.python:
        python = f"python: {spec.python}   # your venv with ray and rayfleet, same path on every node, used as it is\n"
    else:
        python = ("# python: /opt/venv                # a venv of your own on the nodes; unset: rayfleet installs\n"
                  "runtime:                          # its runtime (this machine's versions) on every node\n"
                  f"  path: {spec.runtime.path}\n"
                  "  extra_requirements: []          # packages for your own jobs, e.g. ['scikit-learn==1.5.2']\n")
    return f"""# fleet.yaml: the machines of the Ray cluster '{spec.name}'. Reference: README.md.
name: {spec.name}
head:
  host: {spec.head.host}              # address or name the other nodes reach the head at
workers:
{workers}
ssh:                                # how rayfleet and Ray's launcher log in (same on every node)
  user: {spec.ssh.user}
  key: {spec.ssh.key or '~/.ssh/id_ed25519'}
{python}resources: {{}}                       # e.g. {{num_cpus: 8, num_gpus: 1}}; unset = detected by Ray
# ports: {{gcs: 6379, dashboard: 8265, serve: 8000}}   # all ports: see README
temp_dir: /tmp/rayfleet             # Ray's temp dir on every node
# autoscale: {{min_workers: 0, max_workers: {len(spec.workers)}, idle_timeout_minutes: 5}}   # default: all workers always on
# storage: {{path: /mnt/shared}}     # a directory shared by every node (NFS), for training and the registry
security:
  auth: token                       # Ray token authentication; 'disabled' is unsafe
setup_commands: []                  # shell commands run on every node before Ray starts
"""


def init(
    head: str = typer.Option(..., "--head", help="Head node address."),
    worker: List[str] = typer.Option([], "--worker", help="Worker address (repeat for each worker)."),
    name: str = typer.Option("fleet", "--name", help="Cluster name."),
    ssh_user: str = typer.Option(getpass.getuser(), "--ssh-user",
                                 help="SSH user on every node (best: a dedicated unprivileged user)."),
    ssh_key: str = typer.Option("~/.ssh/id_ed25519", "--ssh-key", help="SSH private key."),
    venv: Optional[str] = typer.Option(None, "--venv", help="A venv of your own on the nodes, used as it is "
                                       "(default: none; rayfleet installs its runtime there)."),
    output: Path = typer.Option(Path("fleet.yaml"), "-o", "--output", help="Where to write it."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a valid, commented fleet.yaml.

    Example: rayfleet init --head 10.0.0.1 --worker 10.0.0.2 --worker 10.0.0.3 --ssh-user ubuntu
    """
    data = {"name": name, "head": {"host": head}, "workers": [{"host": w} for w in worker],
            "ssh": {"user": ssh_user, "key": ssh_key}, **({"python": venv} if venv else {})}
    spec = validate_data(FleetSpec, data, source="command line")
    if output.exists() and not force:
        raise ConfigError(f"{output} exists already.", hint="Pass --force to overwrite it, or -o another path.")
    output.write_text(render_fleet_yaml(spec))
    console.print(f"Wrote {output}. Next: rayfleet check -f {output}")


def exec_(
    host: str = typer.Argument(..., help="A host of the fleet."),
    command: List[str] = typer.Argument(..., help="The command (after --)."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Run a command on one node over SSH; exits with its exit code.

    Several words after '--' run as exactly those arguments (each one quoted for the
    node's shell); one word is a shell command line, as ssh runs it (pipes, globs).

    Example: rayfleet exec 10.0.0.2 -- df -h /tmp

    Example: rayfleet exec gpu1.lan -- 'du -sh /tmp/* | sort -h'
    """
    import shlex

    spec = load_fleet(fleet_file)
    r = fleet_mod.exec_on(spec, host, command[0] if len(command) == 1 else shlex.join(command))
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    raise typer.Exit(r.rc)


def logs(
    host: Optional[str] = typer.Argument(None, help="A host of the fleet (default: the head)."),
    lines: int = typer.Option(50, "-n", "--lines", help="Lines per log file."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Show the tail of the Ray logs (raylet, GCS, autoscaler, dashboard) of one node.

    Example: rayfleet logs 10.0.0.2 -n 100
    """
    spec = load_fleet(fleet_file)
    console.print(fleet_mod.logs(spec, host or spec.head.host, lines), markup=False)


def export_ray_config(fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """Print the Ray cluster-launcher YAML rayfleet renders (for 'ray up' by hand).

    Example: rayfleet export-ray-config -f fleet.yaml > cluster.yaml
    """
    spec = load_fleet(fleet_file)
    sys.stdout.write(fleet_mod.export_config(spec))


def dashboard(
    fleet_file: Optional[Path] = FLEET_OPTION,
    port: int = typer.Option(0, "--port", help="Local port of the tunnel (default: a free one)."),
) -> None:
    """Open the Ray dashboard of a fleet through an SSH tunnel to its head (host key checked), print
    its local URL, and keep the tunnel open until Ctrl-C. The dashboard and the token you give it
    travel inside SSH, not as plain HTTP on the LAN. On the local cluster it prints the URL.

    Example: rayfleet dashboard -f fleet.yaml
    """
    import signal
    import threading

    from rayfleet.cluster.target import resolve_target
    from rayfleet.cluster.tunnel import Tunnel, dashboard_target

    target = resolve_target(fleet_file)
    if target.fleet is None:
        console.print(f"Dashboard: {target.serve.dashboard_url}  (local cluster; its token: "
                      f"{target.local.token_path})", markup=False)
        return
    spec = target.fleet
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Tunnel(spec, *dashboard_target(spec), local_port=port) as t:
        console.print(f"Dashboard: {t.url}  (through SSH to {spec.head.label}; Ctrl-C closes it)", markup=False)
        if spec.auth_enabled:
            console.print(f"  It asks for the fleet's token: {fleet_mod.paths(spec).token}", markup=False)
        try:
            while not stop.is_set() and t.proc.poll() is None:
                stop.wait(0.5)
        except KeyboardInterrupt:
            pass
    console.print("Tunnel closed.")


def certs(
    fleet_file: Optional[Path] = FLEET_OPTION,
    renew: bool = typer.Option(False, "--renew", help="Issue new node certificates and put them on every node."),
    new_ca: bool = typer.Option(False, "--new-ca", help="With --renew: a new CA too (after a leaked key)."),
) -> None:
    """List the fleet's TLS certificates (Ray's gRPC between nodes: security.tls) and when they expire;
    --renew issues new ones and puts them on every node. Ray reads them when it starts: after a renewal,
    'rayfleet down' and 'rayfleet up' (services and jobs restart). 'rayfleet up' renews on its own the
    ones with less than 30 days left.

    Example: rayfleet certs -f fleet.yaml --renew
    """
    from rayfleet.cluster import tls

    spec = load_fleet(fleet_file)
    if not spec.security.tls:
        console.print(f"Fleet '{spec.name}' runs without TLS (security.tls: false): no certificates.")
        return
    if new_ca and not renew:
        raise ConfigError("--new-ca only goes with --renew.", hint="rayfleet certs --renew --new-ca")
    if renew:
        fleet_mod.renew_certs(spec, new_ca=new_ca, progress=lambda m: console.print(f"  {m}", markup=False))
    found = tls.inventory(fleet_mod.paths(spec).dir, spec)
    if not found:
        console.print("No certificates yet: 'rayfleet up' makes them.")
        return
    table = Table("certificate", "expires", "days left", "names")
    for c in found:
        table.add_row(c.name, c.not_after.strftime("%Y-%m-%d"), str(c.days_left), ", ".join(c.sans))
    print_table(table)
    if renew:
        console.print("Renewed. Ray uses them from its next start: rayfleet down && rayfleet up")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(check)
    app.command()(install)
    app.command("exec")(exec_)
    app.command()(logs)
    app.command("export-ray-config")(export_ray_config)
    app.command()(dashboard)
    app.command()(certs)

