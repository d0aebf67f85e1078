"""Where rayfleet keeps its state, and the record of a running local cluster.

Layout of the state dir (``~/.rayfleet``, or ``$RAYFLEET_HOME``)::

    auth_token        the Ray auth token, mode 0600, generated once
    local.json        the running local cluster (ports, process group, id)
    ray/              Ray's --temp-dir for the local cluster (sessions, logs)
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayfleet.cluster.processes import Session
from rayfleet.config.ports import DEFAULTS, port_problem
from rayfleet.errors import ClusterError, ClusterNotRunning

__all__ = [
    "LocalPorts",
    "LocalCluster",
    "state_dir",
    "ensure_token",
    "read_token",
    "auth_env",
    "auth_headers",
    "ray_executable",
    "with_venv_path",
    "reachable_host",
    "load_local_cluster",
    "save_local_cluster",
    "forget_local_cluster",
]

_TOKEN_FILE = "auth_token"
_CLUSTER_FILE = "local.json"


@dataclass(frozen=True)
class LocalPorts:
    """Ports of a local cluster (``config/ports.py`` has the defaults and the rules)."""

    gcs: int = DEFAULTS["gcs"]
    dashboard: int = DEFAULTS["dashboard"]
    serve: int = DEFAULTS["serve"]
    client_server: int = DEFAULTS["client_server"]
    dashboard_agent: int = DEFAULTS["dashboard_agent"]
    min_worker: int = DEFAULTS["min_worker"]
    max_worker: int = DEFAULTS["max_worker"]
    # HAProxy's stats and metrics, Serve's fallback proxy, the replicas' HTTP and gRPC ports: cluster/serving.py.
    min_replica: int = DEFAULTS["min_replica"]
    max_replica: int = DEFAULTS["max_replica"]

    def check(self) -> None:
        """Raise ClusterError when the plan breaks a port rule (two components on one port, ...)."""
        problem = port_problem(asdict(self), lambda field: "--" + _FLAGS.get(field, field).replace("_", "-"))
        if problem:
            raise ClusterError(problem[0], hint=problem[1])


# The `rayfleet up --local` flag of each field, where it is not the field's own name.
_FLAGS = {"gcs": "port", "client_server": "client-port", "dashboard_agent": "agent-port"}
_FLAGS.update({k: f"{k}_port" for k in ("dashboard", "serve", "min_worker", "max_worker", "min_replica",
                                        "max_replica")})


@dataclass(frozen=True)
class LocalCluster:
    """What ``rayfleet up --local`` started; enough for every later command."""

    cluster_id: str
    host: str
    ports: LocalPorts
    num_cpus: int | None
    pgid: int
    temp_dir: str
    token_path: str
    serve_host: str = "127.0.0.1"
    extra: dict = field(default_factory=dict)
    boot_id: str = ""        # the boot ray start ran in, and when its session's leader started:
    leader_start: int = 0    # a stale record never names someone else's session (processes.Session)
    head_recovery: bool = False   # GCS state in RocksDB, the session's leader a supervisor (cluster/supervisor.py)
    prometheus_port: int = 0      # Prometheus on 127.0.0.1 (cluster/monitoring.py); 0: not run

    @property
    def prometheus_url(self) -> str | None:
        return f"http://127.0.0.1:{self.prometheus_port}" if self.prometheus_port else None

    @property
    def session(self) -> Session:
        return Session(self.pgid, self.boot_id, self.leader_start)

    @property
    def gcs_address(self) -> str:
        return f"{self.host}:{self.ports.gcs}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.ports.dashboard}"

    @property
    def serve_url(self) -> str:
        return f"http://{reachable_host(self.serve_host)}:{self.ports.serve}"


def state_dir() -> Path:
    """The rayfleet state dir: ``$RAYFLEET_HOME`` or ``~/.rayfleet``."""
    return Path(os.environ.get("RAYFLEET_HOME") or Path.home() / ".rayfleet").expanduser()


def ensure_token(directory: Path | None = None) -> Path:
    """Create the auth token once (0600) and return its path. Idempotent."""
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / _TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    return path


def read_token(directory: Path | None = None) -> str:
    path = (directory or state_dir()) / _TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError as e:
        raise ClusterNotRunning(
            f"No auth token at {path}.", hint="Start a cluster first: rayfleet up --local"
        ) from e


def auth_env(token_path: str | Path) -> dict[str, str]:
    """Environment that makes Ray's processes and clients use token auth."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def auth_headers(token_path: str | Path) -> dict[str, str]:
    """HTTP headers that authenticate rayfleet's own calls to a dashboard (Jobs API, Serve REST)."""
    return {"Authorization": f"Bearer {Path(token_path).read_text().strip()}"}


def ray_executable() -> str:
    """The ``ray`` CLI of the Python that runs rayfleet (same venv, same version)."""
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else "ray"


def with_venv_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this venv's bin first on PATH: what Ray starts from it ('python ...' entrypoints,
    the launcher's commands) finds this Python, with Ray and rayfleet."""
    return {**env, "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")}


def reachable_host(bind_host: str, wildcard: str = "127.0.0.1") -> str:
    """Where to reach a server bound to ``bind_host``: a wildcard bind (0.0.0.0, empty) at ``wildcard``."""
    return wildcard if bind_host in ("0.0.0.0", "") else bind_host


def load_local_cluster(directory: Path | None = None) -> LocalCluster:
    """The running local cluster's record; ClusterNotRunning when there is none."""
    directory = directory or state_dir()
    path = directory / _CLUSTER_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ClusterNotRunning(
            f"No local cluster is running (no {path}).",
            hint="Start one with: rayfleet up --local",
        ) from e
    except (OSError, ValueError) as e:
        raise ClusterError(
            f"Can't read the cluster record {path}: {e}",
            hint="Run 'rayfleet down --local' to clean up, then 'rayfleet up --local'.",
        ) from e
    raw["ports"] = LocalPorts(**raw["ports"])
    return LocalCluster(**raw)


def save_local_cluster(cluster: LocalCluster, directory: Path | None = None) -> Path:
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / _CLUSTER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=2))
    tmp.replace(path)
    return path


def local_record_path(directory: Path | None = None) -> Path:
    return (directory or state_dir()) / _CLUSTER_FILE


def forget_local_cluster(directory: Path | None = None) -> None:
    ((directory or state_dir()) / _CLUSTER_FILE).unlink(missing_ok=True)
