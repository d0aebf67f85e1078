"""Render fleet.yaml into a config for Ray's cluster launcher (provider ``local``).

What the rendering absorbs (each measured on Ray 2.60, see docs):
- every node starts with ``--node-ip-address`` = the address rayfleet reached it
  at (Ray otherwise guesses by contacting a public address, and falls back to
  127.0.0.1 on isolated networks); a host written as a name is resolved once, on
  the machine that runs rayfleet, and the launcher gets addresses only;
- token auth: the fleet's token is shipped to every node (file_mounts, 0600)
  and ``RAY_AUTH_MODE=token`` set for every ``ray start``;
- mutual TLS on Ray's gRPC (``security.tls``): ``RAY_USE_TLS`` and each node's own certificate, which
  ``rayfleet up`` ships before the launcher runs (cluster/tls.py);
- fixed ports, so firewalls and ``rayfleet check`` know them;
- per-node resources, chosen by node address on the node;
- the dashboard bound to the head's loopback (rayfleet reaches it through an SSH tunnel),
  never 0.0.0.0 unless asked.
Every start command is one call of ``rayfleet.cluster.node_start`` with the venv's Python and a
JSON plan: the logic that runs on the node is Python there, not shell text rendered here.
The v1 autoscaler (``RAY_UP_enable_autoscaler_v2=0``) is chosen where
``ray up`` runs (see fleet.py): v2 does not work with provider ``local``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from rayfleet.cluster import redis_store, tls
from rayfleet.cluster.node_start import SESSION, NodePlan, Supervise
from rayfleet.cluster.serving import haproxy_dir, serve_env
from rayfleet.config.fleet import FleetSpec, ResourcesSpec
from rayfleet.errors import ConfigError

__all__ = ["render", "render_yaml", "remote_token_path", "remote_known_hosts", "proxy_command", "worker_start_command", "started_mark", "node_plan",
           "start_command"]


def remote_token_path(fleet: FleetSpec) -> str:
    return f"~/.rayfleet/{fleet.name}/auth_token"


def remote_known_hosts(fleet: FleetSpec) -> str:
    return f"~/.rayfleet/{fleet.name}/known_hosts"


# Ray's launcher runs ssh with StrictHostKeyChecking=no and UserKnownHostsFile=/dev/null, fixed in its
# code. Its connections go through this ProxyCommand instead: an ssh that checks the host's key against
# the fleet's pinned keys and forwards to the host's sshd (-W), so the launcher's own session runs
# inside a channel to the host whose key was checked, and a host with another key gets nothing.
# Where `ray up` runs, rayfleet sets RAYFLEET_KNOWN_HOSTS / RAYFLEET_SSH_KEY; on the head (the
# autoscaler's connections to workers) the defaults are the files the launcher put there. No quotes:
# Ray hands the options to rsync's --rsh, which does not take backslash escapes.
KNOWN_HOSTS_ENV = "RAYFLEET_KNOWN_HOSTS"
SSH_KEY_ENV = "RAYFLEET_SSH_KEY"


def proxy_command(fleet: FleetSpec) -> str:
    return ("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes "
            f"-o UserKnownHostsFile=${{{KNOWN_HOSTS_ENV}:-$HOME/.rayfleet/{fleet.name}/known_hosts}} "
            f"-o IdentitiesOnly=yes -i ${{{SSH_KEY_ENV}:-$HOME/ray_bootstrap_key.pem}} "
            "-o ConnectTimeout=10 -o LogLevel=ERROR -l %r -p %p -W %h:%p %h")


def _resource_flags(res: ResourcesSpec) -> list[str]:
    flags = []
    if res.num_cpus is not None:
        flags.append(f"--num-cpus={res.num_cpus}")
    if res.num_gpus is not None:
        flags.append(f"--num-gpus={res.num_gpus}")
    if res.object_store_memory is not None:
        flags.append(f"--object-store-memory={res.object_store_memory}")
    if res.custom:
        flags.append("--resources=" + json.dumps(res.custom))
    return flags


def _env(fleet: FleetSpec) -> dict[str, str]:
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": fleet.temp_dir,
           # the head's two Prometheus exporters: fixed ports of the fleet (Ray's defaults, but
           # settable and known to check and the firewall list), on every address like Ray's others
           "DASHBOARD_METRIC_PORT": str(fleet.ports.dashboard_metrics),
           "AUTOSCALER_METRIC_PORT": str(fleet.ports.autoscaler_metrics)}
    # Serve with HAProxy in front and the replicas as their own ingress (cluster/serving.py).
    env.update(serve_env(fleet.ports.min_replica, fleet.ports.max_replica, fleet.temp_dir))
    if fleet.auth_enabled:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": remote_token_path(fleet)})
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    if fleet.security.tls:
        env.update(tls.node_env(fleet))   # each node's certificate, shipped by `up` (cluster/tls.py)
    return env


def started_mark(fleet: FleetSpec) -> str:
    """The one-shot mark of a worker rayfleet just started (node_start.py)."""
    return f"{fleet.temp_dir}/rayfleet-started-{fleet.name}"


def node_plan(fleet: FleetSpec) -> NodePlan:
    """What node_start.py needs to start Ray on any node of the fleet."""
    p = fleet.ports
    return NodePlan(
        head=f"{fleet.head.address}:{p.gcs}",
        ray_start=[
            f"--node-manager-port={p.node_manager}",
            f"--object-manager-port={p.object_manager}",
            f"--metrics-export-port={p.metrics_export}",
            f"--runtime-env-agent-port={p.runtime_env_agent}",
            f"--dashboard-agent-grpc-port={p.dashboard_agent_grpc}",
            f"--dashboard-agent-listen-port={p.dashboard_agent}",
            f"--min-worker-port={p.min_worker}",
            f"--max-worker-port={p.max_worker}",
            f"--temp-dir={fleet.temp_dir}",
            "--disable-usage-stats",
        ],
        head_start=[
            f"--port={p.gcs}", f"--dashboard-host={fleet.dashboard_bind}",
            f"--dashboard-port={p.dashboard}", f"--ray-client-server-port={p.client_server}",
            "--autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        resources={n.address: _resource_flags(fleet.resources_for(n)) for n in fleet.nodes},
        default_resources=_resource_flags(fleet.resources),
        env=_env(fleet),
        temp_dir=fleet.temp_dir,
        private_dirs=[haproxy_dir(fleet.temp_dir)],
        mark=started_mark(fleet),
        supervise=supervise(fleet),
    )


def supervisor_dir(fleet: FleetSpec) -> str:
    """The head supervisor's files on the head (``~/`` = the SSH user's home there)."""
    return f"~/.rayfleet/{fleet.name}/head"


def gcs_store(fleet: FleetSpec) -> str:
    return fleet.head_recovery.path or f"~/.rayfleet/{fleet.name}/gcs-store"


def supervise(fleet: FleetSpec) -> Supervise | None:
    """Head recovery's plan for node_start (None: head_recovery off)."""
    store = fleet.head_recovery.store
    if store == "off":
        return None
    how = fleet.head_recovery.supervisor
    if store == "redis":
        return Supervise(dir=supervisor_dir(fleet), store="", cluster=fleet.name, supervisor=how,
                         redis=redis_store.plan(fleet, supervisor_dir(fleet)))
    return Supervise(dir=supervisor_dir(fleet), store=gcs_store(fleet), cluster=fleet.name, supervisor=how)


def start_command(fleet: FleetSpec, mode: str, session: str | None = None) -> str:
    """The shell command that runs node_start.py in ``mode`` (head, worker SESSION, updater) on a node."""
    args = [mode] + ([session] if session is not None else []) + [json.dumps(node_plan(fleet), sort_keys=True)]
    return f"{fleet.venv_sh}/bin/python -m rayfleet.cluster.node_start " + shlex.join(args)


def worker_start_command(fleet: FleetSpec, session: str) -> str:
    """What rayfleet runs on a worker to start Ray for the head's session ``session`` (node_start.py's
    ``worker`` mode)."""
    if not SESSION.fullmatch(session):
        raise ValueError(f"not a Ray session name: {session!r}")
    return start_command(fleet, "worker", session)


def _check_single_auth(fleet: FleetSpec) -> tuple[str, str, int]:
    auths = {fleet.ssh_for(n) for n in fleet.nodes}
    if len(auths) > 1:
        raise ConfigError(
            "Nodes use different SSH users, keys or ports; Ray's cluster launcher (provider 'local') "
            "uses one for every node.",
            hint="Use the same ssh user/key/port on every node (set them under the top-level 'ssh:').")
    return auths.pop()


def render(fleet: FleetSpec, local_token: Path | None, known_hosts: Path | None = None) -> dict[str, Any]:
    """The launcher config as a dict (``ray up`` reads it as YAML). ``known_hosts``: the fleet's pinned
    host keys; with it, every connection of the launcher checks them (``proxy_command``)."""
    user, key, port = _check_single_auth(fleet)
    if port != 22:
        raise ConfigError(f"ssh port {port}: Ray's cluster launcher (provider 'local') connects on port 22 only.",
                          hint="Run sshd on port 22 on the nodes, or use an ssh_config Host entry.")
    mounts: dict[str, str] = {}
    setup = list(fleet.setup_commands)
    if fleet.auth_enabled:
        assert local_token is not None
        mounts[remote_token_path(fleet)] = str(local_token)
        setup.append(f"chmod 700 ~/.rayfleet ~/.rayfleet/{fleet.name} && chmod 600 {remote_token_path(fleet)}")
    auth = {"ssh_user": user, "ssh_private_key": key}
    if known_hosts is not None:
        mounts[remote_known_hosts(fleet)] = str(known_hosts)   # the autoscaler's, on the head
        auth["ssh_proxy_command"] = proxy_command(fleet)
    setup.append(f"mkdir -p {shlex.quote(fleet.temp_dir)}")
    return {
        "cluster_name": fleet.name,
        "provider": {
            "type": "local",
            "head_ip": fleet.head.address,   # addresses, also for names: Ray knows nodes by address
            "worker_ips": [w.address for w in fleet.workers],
        },
        "auth": auth,
        "min_workers": fleet.min_workers,
        "max_workers": fleet.max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": fleet.autoscale.idle_timeout_minutes,
        "file_mounts": mounts,
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": setup,
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [start_command(fleet, "head")],
        "worker_start_ray_commands": [start_command(fleet, "updater")],
    }


def render_yaml(fleet: FleetSpec, local_token: Path | None, known_hosts: Path | None = None) -> str:
    header = (f"# Ray cluster launcher config rendered by rayfleet from fleet '{fleet.name}'.\n"
              "# Use it with: RAY_UP_enable_autoscaler_v2=0 ray up THIS_FILE\n")
    if known_hosts is not None:
        user, key, _ = _check_single_auth(fleet)
        header += (f"# and, for its host key checks: {KNOWN_HOSTS_ENV}={known_hosts} {SSH_KEY_ENV}={key}\n")
    if fleet.security.tls:
        header += "# Ray's gRPC runs with TLS: put the nodes' certificates there first: rayfleet certs --renew -f FLEET.yaml\n"
    return header + yaml.safe_dump(render(fleet, local_token, known_hosts), sort_keys=False, width=1000)
