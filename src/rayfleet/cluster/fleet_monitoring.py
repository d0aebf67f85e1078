"""A fleet's Prometheus on its head, as fleet.yaml's ``monitoring:`` says: what ``rayfleet up`` runs there
(cluster/monitoring.py's ``ensure``/``stop``) and where its files are."""

from __future__ import annotations

import json
import shlex
from typing import Callable

from rayfleet.cluster.ssh import SSHError
from rayfleet.config.fleet import FleetSpec, shell_path
from rayfleet.errors import ClusterError

__all__ = ["monitoring_dir", "ensure_monitoring"]

Progress = Callable[[str], None]


def monitoring_dir(fleet: FleetSpec) -> str:
    """Prometheus's files on the head (``~/`` = the SSH user's home there)."""
    from rayfleet.cluster.monitoring import DIR_NAME

    return f"~/.rayfleet/{fleet.name}/{DIR_NAME}"


def _monitoring_command(fleet: FleetSpec) -> str:
    """What the head runs at every ``up``: Prometheus ensured (monitoring on) or stopped (off)."""
    module = f"{fleet.venv_sh}/bin/python -m rayfleet.cluster.monitoring"
    if not fleet.monitoring.enabled:
        return f"{module} stop {shell_path(monitoring_dir(fleet))}"
    m = fleet.monitoring
    plan = {"dir": monitoring_dir(fleet), "port": m.port, "retention": m.retention, "binary": m.prometheus_path,
            "sd": f"{fleet.temp_dir}/prom_metrics_service_discovery.json"}
    return f"{module} ensure {shlex.quote(json.dumps(plan))}"


def ensure_monitoring(fleet: FleetSpec, progress: Progress | None = None) -> str | None:
    """Prometheus on the head as fleet.yaml's ``monitoring:`` says (started, kept, started again with new
    settings, or stopped): what it did, in words (None: off and none ran). Not in the launcher's config:
    turning it on or off restarts no Ray."""
    from rayfleet.cluster.fleet import exec_on

    try:
        r = exec_on(fleet, fleet.head.host, _monitoring_command(fleet), timeout_s=120)
    except SSHError as e:
        raise ClusterError(f"Prometheus on the head: {e.message}", hint="Fix SSH to the head, then run 'rayfleet "
                                                                        "up' again (the cluster itself runs).") from None
    if not r.ok:
        err = r.stderr.strip().removeprefix("error: ") or f"exit {r.returncode}"
        raise ClusterError(f"Prometheus did not start on the head {fleet.head.label}: {err.splitlines()[0]}",
                           context="\n".join(err.splitlines()[1:]) or None,
                           hint="Install it on the head (sudo apt install prometheus) or set "
                                "monitoring.prometheus_path, then run 'rayfleet up' again (the cluster itself runs).")
    said = r.stdout.strip()
    if not fleet.monitoring.enabled:
        return "Prometheus stopped (monitoring is off)" if said == "stopped" else None
    if progress:
        progress(f"Prometheus {said}")
    return said
