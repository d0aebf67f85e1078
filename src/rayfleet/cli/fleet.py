"""``rayfleet init``, ``check``, ``exec``, ``logs`` and ``export-ray-config`` (fleets)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from rayfleet.cli._common import FLEET_OPTION, console, load_fleet, print_report
from rayfleet.cluster import fleet as fleet_mod
from rayfleet.cluster.preflight import run_checks
from rayfleet.config.fleet import FleetSpec
from rayfleet.config.loader import validate_data
from rayfleet.errors import ConfigError

__all__ = ["register", "render_fleet_yaml"]


def check(fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """Check every host in parallel: SSH, versions, ports, disk, GPUs, storage, clocks. Exit 1 on any ✗.

    Example: rayfleet check -f fleet.yaml
    """
    spec = load_fleet(fleet_file)
    with console.status(f"Checking {len(spec.nodes)} hosts ..."):
        report = run_checks(spec, fleet_mod.paths(spec).known_hosts)
    print_report(report)
    if not report.ok:
        raise typer.Exit(1)
    console.print(f"All {len(spec.nodes)} hosts are ready.")


def render_fleet_yaml(spec: FleetSpec) -> str:
    workers = "\n".join(f"  - host: {w.host}" for w in spec.workers) or "  []"
    if not spec.workers:
        workers = "  []"
    return f"""# fleet.yaml: the machines of the Ray cluster '{spec.name}'. Reference: README.md.
name: {spec.name}
head:
  host: {spec.head.host}              # address or name the other nodes reach the head at
workers:
{workers}
ssh:                                # how rayfleet and Ray's launcher log in (same on every node)
  user: {spec.ssh.user or 'root'}
  key: {spec.ssh.key or '~/.ssh/id_ed25519'}
python: {spec.python}   # the venv with ray and rayfleet, same path on every node
resources: {{}}                       # e.g. {{num_cpus: 8, num_gpus: 1}}; unset = detected by Ray
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
    ssh_user: str = typer.Option("root", "--ssh-user", help="SSH user on every node."),
    ssh_key: str = typer.Option("~/.ssh/id_ed25519", "--ssh-key", help="SSH private key."),
    venv: str = typer.Option(sys.prefix, "--venv", help="The venv on the nodes (default: this one's path)."),
    output: Path = typer.Option(Path("fleet.yaml"), "-o", "--output", help="Where to write it."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a valid, commented fleet.yaml.

    Example: rayfleet init --head 10.0.0.1 --worker 10.0.0.2 --worker 10.0.0.3 --ssh-user ubuntu
    """
    data = {"name": name, "head": {"host": head}, "workers": [{"host": w} for w in worker],
            "ssh": {"user": ssh_user, "key": ssh_key}, "python": venv}
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


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(check)
    app.command("exec")(exec_)
    app.command()(logs)
    app.command("export-ray-config")(export_ray_config)

