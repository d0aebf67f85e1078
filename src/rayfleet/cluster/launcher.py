"""Render fleet.yaml into a config for Ray's cluster launcher (provider ``local``).

What the rendering absorbs (each measured on Ray 2.60, see docs):
- every node starts with ``--node-ip-address`` = the address rayfleet reached it
  at (Ray otherwise guesses by contacting a public address, and falls back to
  127.0.0.1 on isolated networks); a host written as a name is resolved once, on
  the machine that runs rayfleet, and the launcher gets addresses only;
- token auth: the fleet's token is shipped to every node (file_mounts, 0600)
  and ``RAY_AUTH_MODE=token`` set for every ``ray start``;
- fixed ports, so firewalls and ``rayfleet check`` know them;
- per-node resources, chosen by node address inside the start command;
- the dashboard bound to the head's address, never 0.0.0.0 unless asked.
The v1 autoscaler (``RAY_UP_enable_autoscaler_v2=0``) is chosen where
``ray up`` runs (see fleet.py): v2 does not work with provider ``local``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from rayfleet._compat.ray import RAYLET_COMMAND, raylet_args
from rayfleet.cluster.serving import serve_env
from rayfleet.config.fleet import FleetSpec, NodeSpec, ResourcesSpec
from rayfleet.errors import ConfigError

__all__ = ["render", "render_yaml", "remote_token_path", "NODE_IP", "worker_start_command", "started_mark",
           "STARTED_MARK_TTL_S"]

# The address the node was reached at: ssh sets SSH_CONNECTION="client cport server sport".
NODE_IP = "$(echo $SSH_CONNECTION | cut -d' ' -f3)"


def remote_token_path(fleet: FleetSpec) -> str:
    return f"~/.rayfleet/{fleet.name}/auth_token"


def _resource_flags(res: ResourcesSpec) -> list[str]:
    flags = []
    if res.num_cpus is not None:
        flags.append(f"--num-cpus={res.num_cpus}")
    if res.num_gpus is not None:
        flags.append(f"--num-gpus={res.num_gpus}")
    if res.object_store_memory is not None:
        flags.append(f"--object-store-memory={res.object_store_memory}")
    if res.custom:
        flags.append("--resources=" + shlex.quote(json.dumps(res.custom)))
    return flags


def _per_node_resources(fleet: FleetSpec, nodes: list[NodeSpec]) -> str:
    """A shell `case` that sets RES to the resource flags of the node at $IP."""
    arms = []
    for n in nodes:
        flags = " ".join(_resource_flags(fleet.resources_for(n)))
        arms.append(f"{shlex.quote(n.address)}) RES={shlex.quote(flags)} ;;")
    default = " ".join(_resource_flags(fleet.resources))
    arms.append(f"*) RES={shlex.quote(default)} ;;")
    return 'case "$IP" in ' + " ".join(arms) + " esac"


def _env(fleet: FleetSpec) -> str:
    # The venv first on PATH: job entrypoints ('python ...') must find Ray and rayfleet.
    parts = [f"PATH={fleet.venv_sh}/bin:$PATH", "RAY_USAGE_STATS_ENABLED=0",
             f"RAY_TMPDIR={shlex.quote(fleet.temp_dir)}"]
    # Serve with HAProxy in front and the replicas as their own ingress (cluster/serving.py).
    env = serve_env(fleet.ports.min_replica, fleet.ports.max_replica)
    parts += [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    if fleet.auth_enabled:
        parts += ["RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN_PATH={remote_token_path(fleet)}"]
    else:
        parts += ["RAY_AUTH_MODE=disabled"]
    return "export " + " ".join(parts) + " && " + _gloo_interface(fleet)


# Gloo (PyTorch DDP on CPUs) advertises the address its host name resolves to; where that is
# loopback (Debian's "127.0.1.1 HOSTNAME", containers) ranks on other nodes can't connect. Every
# Ray process of a node gets GLOO_SOCKET_IFNAME = the interface that holds the node's address, so
# any DDP program (rayfleet's training or the user's own, via rayfleet submit) works across nodes.
# A value already in the environment wins (train/distributed.py does the same per worker).
def _gloo_interface(fleet: FleetSpec) -> str:
    """Shell (one line: the launcher runs it through ssh): the interface that holds $IP, from iproute2."""
    return ("IFACE=$(ip -o addr show 2>/dev/null | awk -v ip=\"$IP\" '{split($4, a, \"/\"); if (a[1] == ip) "
            "{sub(/@.*/, \"\", $2); print $2; exit}}' || true) && "
            'if [ -n "$IFACE" ] && [ -z "${GLOO_SOCKET_IFNAME:-}" ]; then export GLOO_SOCKET_IFNAME="$IFACE"; fi')


def _common_flags(fleet: FleetSpec) -> list[str]:
    p = fleet.ports
    return [
        "--node-ip-address=$IP",
        f"--node-manager-port={p.node_manager}",
        f"--object-manager-port={p.object_manager}",
        f"--metrics-export-port={p.metrics_export}",
        f"--runtime-env-agent-port={p.runtime_env_agent}",
        f"--dashboard-agent-grpc-port={p.dashboard_agent_grpc}",
        f"--dashboard-agent-listen-port={p.dashboard_agent}",
        f"--min-worker-port={p.min_worker}",
        f"--max-worker-port={p.max_worker}",
        f"--temp-dir={shlex.quote(fleet.temp_dir)}",
        "--disable-usage-stats",
        "$RES",
    ]


# ``rayfleet up`` starts Ray on the workers itself, as soon as the head is up, with the
# same commands (fleet.py, _start_workers), instead of waiting ~15-20 s for the v1
# autoscaler to launch them. So that the autoscaler's updater, when it comes, does not
# restart those workers a second time, rayfleet leaves a one-shot mark on the worker
# (the session name of the Ray it started, under a lock both take): the launcher's
# worker start command skips the restart only when that mark is fresh and a raylet of
# exactly that session and head is running; it always removes the mark. Without a mark
# (plain `ray up`, autoscaling, recovery) it is Ray's usual `ray stop` + `ray start`.
STARTED_MARK_TTL_S = 180


def started_mark(fleet: FleetSpec) -> str:
    return f"{fleet.temp_dir}/rayfleet-started-{fleet.name}"


def _raylet_of(fleet: FleetSpec, session: str) -> str:
    """A shell test: a raylet of this head and of session ``session`` runs here. ``session``
    is shell text that expands to a session name inside double quotes."""
    gcs_arg, session_arg = raylet_args(f"{fleet.head.address}:{fleet.ports.gcs}", session)
    # [r]: the pattern must not match the command line of the shell that runs it
    binary = "/".join(f"[{part[0]}]{part[1:]}" for part in RAYLET_COMMAND.split("/"))
    return (f"pgrep -af '{binary}' | grep -F -- {shlex.quote(gcs_arg + ' ')} "
            f'| grep -qE -- "{session_arg}( |\\$)"')


def _worker_start(fleet: FleetSpec) -> str:
    ray = fleet.ray_cli
    p = fleet.ports
    return " && ".join([
        f"IP={NODE_IP}", _per_node_resources(fleet, fleet.nodes), _env(fleet), "ulimit -n 65536 || true",
        # 9>&-: the lock's descriptor must not live on in Ray's daemons
        " ".join([f"{ray} start", f"--address={fleet.head.address}:{p.gcs}", *_common_flags(fleet), "9>&-"]),
    ])


def _locked(fleet: FleetSpec) -> str:
    lock = shlex.quote(started_mark(fleet) + ".lock")
    return f"mkdir -p {shlex.quote(fleet.temp_dir)} && exec 9>>{lock}; flock -w 300 9 2>/dev/null; "


def worker_start_command(fleet: FleetSpec, session: str) -> str:
    """What rayfleet runs on a worker to start Ray for the head's session ``session``: nothing
    if a raylet of that session already runs there, else ``ray stop`` (when any Ray runs) and
    the launcher's start command; then the one-shot mark for the autoscaler's updater."""
    if not re.fullmatch(r"session_[\w.-]+", session):
        raise ValueError(f"not a Ray session name: {session!r}")
    ray = fleet.ray_cli
    mark = shlex.quote(started_mark(fleet))
    return (_locked(fleet)
            + f"if {_raylet_of(fleet, session)}; then echo 'Ray of this session already runs here'; exit 0; fi; "
            + f"if pgrep -f '[r]aylet|[g]cs_server|[r]ay::' >/dev/null; then {ray} stop --force 9>&-; fi; "
            + f"{_worker_start(fleet)} && echo {session} > {mark}")


def _check_single_auth(fleet: FleetSpec) -> tuple[str, str, int]:
    auths = {fleet.ssh_for(n) for n in fleet.nodes}
    if len(auths) > 1:
        raise ConfigError(
            "Nodes use different SSH users, keys or ports; Ray's cluster launcher (provider 'local') "
            "uses one for every node.",
            hint="Use the same ssh user/key/port on every node (set them under the top-level 'ssh:').")
    return auths.pop()


def render(fleet: FleetSpec, local_token: Path | None) -> dict[str, Any]:
    """The launcher config as a dict (``ray up`` reads it as YAML)."""
    user, key, port = _check_single_auth(fleet)
    if port != 22:
        raise ConfigError(f"ssh port {port}: Ray's cluster launcher (provider 'local') connects on port 22 only.",
                          hint="Run sshd on port 22 on the nodes, or use an ssh_config Host entry.")
    ray = fleet.ray_cli
    p = fleet.ports
    ip = f"IP={NODE_IP}"
    res = _per_node_resources(fleet, fleet.nodes)
    dash_host = fleet.security.dashboard_host or "$IP"
    mounts: dict[str, str] = {}
    setup = list(fleet.setup_commands)
    if fleet.auth_enabled:
        assert local_token is not None
        mounts[remote_token_path(fleet)] = str(local_token)
        setup.append(f"chmod 700 ~/.rayfleet ~/.rayfleet/{fleet.name} && chmod 600 {remote_token_path(fleet)}")
    setup.append(f"mkdir -p {shlex.quote(fleet.temp_dir)}")
    head_start = [
        f"{ray} stop --force",
        " && ".join([
            ip, res, _env(fleet), "ulimit -n 65536 || true",
            " ".join([f"{ray} start --head", f"--port={p.gcs}", f"--dashboard-host={dash_host}",
                      f"--dashboard-port={p.dashboard}", f"--ray-client-server-port={p.client_server}",
                      "--autoscaling-config=~/ray_bootstrap_config.yaml", *_common_flags(fleet)]),
        ]),
    ]
    mark = shlex.quote(started_mark(fleet))
    fresh = f"[ $(( $(date +%s) - $(stat -c %Y {mark}) )) -lt {STARTED_MARK_TTL_S} ]"
    worker_start = [
        _locked(fleet)
        + f"if [ -f {mark} ] && {fresh} && {_raylet_of(fleet, f'$(cat {mark})')}; then rm -f {mark}; "
        + "echo 'rayfleet up started Ray here moments ago for this head: not restarting it'; "
        + f"else rm -f {mark}; {ray} stop --force 9>&-; {_worker_start(fleet)}; fi",
    ]
    return {
        "cluster_name": fleet.name,
        "provider": {
            "type": "local",
            "head_ip": fleet.head.address,   # addresses, also for names: Ray knows nodes by address
            "worker_ips": [w.address for w in fleet.workers],
        },
        "auth": {"ssh_user": user, "ssh_private_key": key},
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
        "head_start_ray_commands": head_start,
        "worker_start_ray_commands": worker_start,
    }


def render_yaml(fleet: FleetSpec, local_token: Path | None) -> str:
    header = (f"# Ray cluster launcher config rendered by rayfleet from fleet '{fleet.name}'.\n"
              "# Use it with: RAY_UP_enable_autoscaler_v2=0 ray up THIS_FILE\n")
    return header + yaml.safe_dump(render(fleet, local_token), sort_keys=False, width=1000)
