"""A single-node Ray cluster on this machine, secure by default.

``start`` runs ``ray start --head`` with its own temp dir under the state dir,
known ports, the dashboard bound to 127.0.0.1 and token authentication on;
``stop`` ends exactly the processes of that cluster (found by their
environment marker, see ``processes.py``) and nothing else.

With head recovery (the default) the GCS keeps the cluster's state in RocksDB under
the state dir, and ``ray start --head`` is run by a supervisor that runs it again when
the head dies (``supervisor.py``): services come back by themselves. ``stop`` removes
the store; a cluster that crashed keeps it, and the next ``start`` takes it back.

Contract: ``start`` is idempotent (a running cluster is returned as is);
``stop`` is idempotent (no cluster is not an error).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from rayfleet._compat.ray import session_logs
from rayfleet.cluster import monitoring as prom
from rayfleet.cluster import processes, state
from rayfleet.cluster.serving import haproxy_dir, private_dir, serve_env
from rayfleet.cluster.supervisor import HeadSpec, read_restarts, spawn
from rayfleet.cluster.state import (
    LocalCluster,
    LocalPorts,
    auth_env,
    ensure_token,
    forget_local_cluster,
    load_local_cluster,
    local_record_path,
    ray_executable,
    save_local_cluster,
    state_dir,
    with_venv_path,
)
from rayfleet.errors import ClusterError, ClusterNotRunning

__all__ = ["StartResult", "Monitoring", "start", "stop", "current", "pids", "is_alive", "auth_headers",
           "ray_executable", "head_restarts", "gcs_store", "monitoring_dir"]

_START_TIMEOUT_S = 120
_HEAD_SPEC = "head.json"
_RESTARTS = "head-restarts.json"
_SUPERVISOR_LOG = "supervisor.log"


def gcs_store(directory: Path) -> Path:
    """Where the GCS keeps the cluster's state (RocksDB) when head recovery is on."""
    return directory / "gcs-store"


def head_restarts(directory: Path | None = None) -> dict:
    """How often the supervisor restarted the head: {"count": N, "history": [...]} (supervisor.read_restarts)."""
    return read_restarts((directory or state_dir()) / _RESTARTS)


@dataclass(frozen=True)
class StartResult:
    cluster: LocalCluster
    already_running: bool
    monitoring_started: bool = False


@dataclass(frozen=True)
class Monitoring:
    """Prometheus for the local cluster (``up --local --monitoring``): cluster/monitoring.py."""

    port: int = prom.DEFAULT_PORT
    retention: str = prom.DEFAULT_RETENTION
    binary: str = "prometheus"


def monitoring_dir(directory: Path | None = None) -> Path:
    """Prometheus's config, data, log and PID file for the local cluster."""
    return (directory or state_dir()) / "prometheus"


def _prometheus_binary(m: Monitoring) -> str:
    try:
        return prom.find_binary(m.binary)
    except prom.MissingPrometheus as e:
        raise ClusterError(f"--monitoring needs Prometheus on this machine: {e}.", hint=prom.INSTALL_HINT) from None


def _start_monitoring(cluster: LocalCluster, m: Monitoring, binary: str, directory: Path) -> LocalCluster:
    """Prometheus started (or kept, when it runs on the same port) and recorded in the cluster's record."""
    where = monitoring_dir(directory)
    if cluster.prometheus_port and cluster.prometheus_port != m.port:
        prom.stop(where)
    if prom.running(where) is None and (_port_in_use("127.0.0.1", m.port) or _port_in_use("0.0.0.0", m.port)):
        raise ClusterError(f"Port {m.port} (Prometheus) is already in use on this machine.",
                           hint="Pick another port with --prometheus-port N, or stop what uses it (the prometheus "
                                "package's own service listens on 9090: sudo systemctl disable --now prometheus).")
    try:
        prom.start(where, binary=binary, port=m.port, retention=m.retention, sd=prom.sd_file(cluster.temp_dir),
                   loopback=True)
    except prom.StartFailed as e:
        message, _, tail = str(e).partition("\n")
        raise ClusterError(message, context=tail, hint="Fix what its log says, then run 'rayfleet up --local "
                                                       "--monitoring' again (the cluster itself runs).") from None
    cluster = dataclasses.replace(cluster, prometheus_port=m.port)
    save_local_cluster(cluster, directory)
    return cluster


def auth_headers(cluster: LocalCluster) -> dict[str, str]:
    """HTTP headers that authenticate rayfleet's own calls to the dashboard/Jobs API."""
    return state.auth_headers(cluster.token_path)


def pids(cluster: LocalCluster) -> list[int]:
    """PIDs of every live process of this cluster (and of no other)."""
    return processes.cluster_pids(cluster.cluster_id, cluster.session)


def is_alive(cluster: LocalCluster, timeout_s: float = 3.0) -> bool:
    """True when the cluster's processes run and its dashboard answers with our token."""
    if not pids(cluster):
        return False
    try:
        r = requests.get(
            f"{cluster.dashboard_url}/api/version", headers=auth_headers(cluster), timeout=timeout_s
        )
    except (requests.RequestException, OSError):
        return False
    return r.status_code == 200


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


_PORT_FLAGS = {
    "gcs": "--port",
    "dashboard": "--dashboard-port",
    "serve": "--serve-port",
    "client_server": "--client-port",
    "dashboard_agent": "--agent-port",
}


def _check_ports_free(ports: LocalPorts) -> None:
    for name, flag in _PORT_FLAGS.items():
        port = getattr(ports, name)
        if _port_in_use("0.0.0.0", port) or _port_in_use("127.0.0.1", port):
            raise ClusterError(
                f"Port {port} (the {name.replace('_', ' ')} port) is already in use on this machine.",
                hint=f"Stop what uses it, or pick another port with {flag} N.",
            )


def _ray_start_args(ports: LocalPorts, host: str, dashboard_host: str, temp_dir: Path,
                    num_cpus: int | None) -> list[str]:
    args = [
        ray_executable(), "start", "--head",
        "--node-ip-address", host,
        "--port", str(ports.gcs),
        "--dashboard-host", dashboard_host,
        "--dashboard-port", str(ports.dashboard),
        "--ray-client-server-port", str(ports.client_server),
        "--dashboard-agent-listen-port", str(ports.dashboard_agent),
        "--min-worker-port", str(ports.min_worker),
        "--max-worker-port", str(ports.max_worker),
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    return args


_MAX_TEMP_DIR_LEN = 40  # Ray adds ~65 chars of session/sockets path; AF_UNIX allows 107


def _ray_temp_dir(directory: Path) -> Path:
    """Ray's --temp-dir: under the state dir, or a short stable /tmp path when that is too long."""
    preferred = directory.resolve() / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR_LEN:
        return preferred
    digest = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"rayfleet-{digest}"


def start(
    *,
    ports: LocalPorts | None = None,
    num_cpus: int | None = None,
    dashboard_host: str = "127.0.0.1",
    serve_host: str = "127.0.0.1",
    directory: Path | None = None,
    head_recovery: bool = True,
    monitoring: Monitoring | None = None,
) -> StartResult:
    """Start the local cluster, or return the running one unchanged. ``head_recovery``: the GCS's state in
    RocksDB under ``directory`` and a supervisor that starts the head again when it dies. ``monitoring``:
    Prometheus too (also added to a running cluster that has none)."""
    directory = directory or state_dir()
    ports = ports or LocalPorts()
    ports.check()
    binary = _prometheus_binary(monitoring) if monitoring is not None else ""   # before anything starts
    running = _running_or_cleared(directory)
    if running is not None:
        if monitoring is None or (running.prometheus_port == monitoring.port
                                  and prom.running(monitoring_dir(directory)) is not None):
            return StartResult(running, already_running=True)
        return StartResult(_start_monitoring(running, monitoring, binary, directory), already_running=True,
                           monitoring_started=True)
    _check_ports_free(ports)
    token_path = ensure_token(directory)
    temp_dir = _ray_temp_dir(directory)
    temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster = LocalCluster(cluster_id=uuid.uuid4().hex[:12], host="127.0.0.1", ports=ports, num_cpus=num_cpus,
                           pgid=0, temp_dir=str(temp_dir), token_path=str(token_path), serve_host=serve_host,
                           head_recovery=head_recovery)
    session = _ray_start(cluster, dashboard_host, directory, monitoring.port if monitoring is not None else 0)
    cluster = dataclasses.replace(cluster, pgid=session.id, boot_id=session.boot, leader_start=session.leader_start)
    save_local_cluster(cluster, directory)
    _wait_for_dashboard(cluster)
    if monitoring is not None:
        cluster = _start_monitoring(cluster, monitoring, binary, directory)
    return StartResult(cluster, already_running=False, monitoring_started=monitoring is not None)


def _running_or_cleared(directory: Path) -> LocalCluster | None:
    """The recorded cluster when it is alive; else its leftovers (a crashed cluster) ended and forgotten."""
    try:
        existing = load_local_cluster(directory)
    except ClusterNotRunning:
        return None
    if is_alive(existing):
        return existing
    if existing.head_recovery and existing.session.is_ours() and processes.is_running(existing.pgid):
        deadline = time.monotonic() + 90   # its supervisor is starting the head again: let it
        while time.monotonic() < deadline and processes.is_running(existing.pgid):
            if is_alive(existing):
                return existing
            time.sleep(1)
    processes.terminate(existing.cluster_id, existing.session)
    forget_local_cluster(directory)
    return None


def _ray_start(cluster: LocalCluster, dashboard_host: str, directory: Path, prometheus_port: int = 0
               ) -> processes.Session:
    """``ray start --head`` in a new session (its leader's pid is the session's id): run directly, or by the
    head's supervisor (head recovery). ``prometheus_port``: the dashboard's metrics charts ask that
    Prometheus. ClusterError with the log's tail."""
    ports = cluster.ports
    log_path = directory / "ray-start.log"
    env = dict(os.environ)
    env.update(auth_env(cluster.token_path))
    env[processes.MARKER_ENV] = cluster.cluster_id
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if prometheus_port:
        env.setdefault("RAY_PROMETHEUS_HOST", f"http://127.0.0.1:{prometheus_port}")
    for key, value in serve_env(ports.min_replica, ports.max_replica, cluster.temp_dir).items():
        env.setdefault(key, value)  # a variable set by the user wins (e.g. RAY_SERVE_ENABLE_HA_PROXY=0)
    try:
        private_dir(haproxy_dir(cluster.temp_dir))
    except (OSError, ValueError) as e:
        raise ClusterError(f"Can't make HAProxy's private directory: {e}") from None
    args = _ray_start_args(ports, cluster.host, dashboard_host, Path(cluster.temp_dir), cluster.num_cpus)
    if cluster.head_recovery:
        store = gcs_store(directory)
        store.mkdir(mode=0o700, exist_ok=True)
        env.update(RAY_gcs_storage="rocksdb", RAY_gcs_storage_path=str(store))
        spec = HeadSpec(cluster_id=cluster.cluster_id, args=args, log=str(log_path),
                        restarts=str(directory / _RESTARTS), record=str(local_record_path(directory)),
                        gcs_address=cluster.gcs_address)
        spec.save(directory / _HEAD_SPEC)
        session, rc = _supervised(directory, env)
    else:
        with open(log_path, "w") as log:
            try:
                proc = subprocess.Popen(args, env=with_venv_path(env), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                raise ClusterError(f"Could not run 'ray start': {e}",
                                   hint="Install the project into this venv: pip install -e .") from e
            session = processes.Session.of(proc.pid)   # before it can be reaped
            try:
                rc = proc.wait(timeout=_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = None
    if rc != 0:
        processes.terminate(cluster.cluster_id, session)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise ClusterError(
            "'ray start --head' failed" + (" (timed out)" if rc is None else f" (exit {rc})") + ".",
            context=tail, hint=f"See the full log in {log_path}.",
        )
    return session


def _supervised(directory: Path, env: dict[str, str]) -> tuple[processes.Session, int | None]:
    """Start the head's supervisor (it runs ``ray start --head``); its session and ray start's exit status."""
    pid, line = spawn(directory / _HEAD_SPEC, with_venv_path(env), directory / _SUPERVISOR_LOG)
    words = line.split()
    if words[:1] == ["started"]:
        return processes.Session.of(pid), 0
    return processes.Session.of(pid), (int(words[1]) if len(words) > 1 and words[1].lstrip("-").isdigit() else None)


def _wait_for_dashboard(cluster: LocalCluster, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_alive(cluster):
        if time.monotonic() > deadline:
            raise ClusterError(
                f"The cluster started but its dashboard at {cluster.dashboard_url} does not answer.",
                hint=f"Look at the logs under {session_logs(cluster.temp_dir)}, then run 'rayfleet down --local'.",
            )
        time.sleep(0.5)


def stop(directory: Path | None = None) -> LocalCluster | None:
    """Stop the local cluster's processes and forget it. Returns what was stopped, or None."""
    directory = directory or state_dir()
    try:
        cluster = load_local_cluster(directory)
    except ClusterNotRunning:
        return None
    if cluster.head_recovery and cluster.session.is_ours() and processes.is_running(cluster.pgid):
        try:
            os.kill(cluster.pgid, signal.SIGTERM)   # the supervisor first: it must not start the head again
        except ProcessLookupError:
            pass
    prom.stop(monitoring_dir(directory))
    left = processes.terminate(cluster.cluster_id, cluster.session)
    if left:
        raise ClusterError(
            f"Ray processes of the local cluster are still alive after SIGKILL: {left}.",
            hint="Check them with 'ps -o pid,stat,args -p " + ",".join(map(str, left)) + "'.",
        )
    forget_local_cluster(directory)
    shutil.rmtree(gcs_store(directory), ignore_errors=True)   # stopped, not crashed: the next up starts afresh
    (directory / _RESTARTS).unlink(missing_ok=True)
    return cluster


def current(directory: Path | None = None) -> LocalCluster:
    """The running local cluster, verified alive; ClusterNotRunning otherwise."""
    cluster = load_local_cluster(directory)
    if not is_alive(cluster):
        if cluster.head_recovery and cluster.session.is_ours() and processes.is_running(cluster.pgid):
            raise ClusterNotRunning(
                f"The local cluster's head is down; its supervisor (PID {cluster.pgid}) is starting it again.",
                hint="Try again in a few seconds; 'rayfleet status' shows the head's restarts. "
                     f"The supervisor's log: {(directory or state_dir()) / _SUPERVISOR_LOG}",
            )
        raise ClusterNotRunning(
            f"The local cluster recorded in {directory or state_dir()} is not running.",
            hint="Start it with: rayfleet up --local",
        )
    return cluster

