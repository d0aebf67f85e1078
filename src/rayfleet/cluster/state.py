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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayfleet.cluster.serving import MIN_REPLICA_PORTS
from rayfleet.errors import ClusterError, ClusterNotRunning

__all__ = [
    "LocalPorts",
    "LocalCluster",
    "state_dir",
    "ensure_token",
    "read_token",
    "auth_env",
    "load_local_cluster",
    "save_local_cluster",
    "forget_local_cluster",
]

_TOKEN_FILE = "auth_token"
_CLUSTER_FILE = "local.json"


@dataclass(frozen=True)
class LocalPorts:
    """Ports of a local cluster. Ray's own defaults, except Serve's HTTP port."""

    gcs: int = 6379
    dashboard: int = 8265
    serve: int = 8000
    client_server: int = 10001
    dashboard_agent: int = 52365
    min_worker: int = 10002
    max_worker: int = 19999
    # HAProxy's stats and metrics, then the Serve replicas' own HTTP and gRPC ports: cluster/serving.py.
    min_replica: int = 30000
    max_replica: int = 31999

    def check(self) -> None:
        """Raise ClusterError when two components would share a port."""
        ranges = ("min_worker", "max_worker", "min_replica", "max_replica")
        named = {k: v for k, v in asdict(self).items() if k not in ranges}
        for name, port in named.items():
            if not 1 <= port <= 65535:
                raise ClusterError(
                    f"Got {port} for the {name} port; expected an integer 1-65535."
                )
            if self.min_worker <= port <= self.max_worker:
                raise ClusterError(
                    f"The {name} port {port} lies inside the worker port range "
                    f"{self.min_worker}-{self.max_worker}.",
                    hint="Pick another port, or move the range with --min-worker-port/--max-worker-port.",
                )
            if self.min_replica <= port <= self.max_replica:
                raise ClusterError(
                    f"The {name} port {port} lies inside the Serve replica port range "
                    f"{self.min_replica}-{self.max_replica}.",
                    hint="Pick another port, or move the range with --min-replica-port/--max-replica-port.",
                )
        seen: dict[int, str] = {}
        for name, port in named.items():
            if port in seen:
                raise ClusterError(
                    f"The {seen[port]} and {name} ports are both {port}; each needs its own port."
                )
            seen[port] = name
        if self.min_worker > self.max_worker:
            raise ClusterError(
                f"Worker port range {self.min_worker}-{self.max_worker} is empty; "
                "--min-worker-port must not exceed --max-worker-port."
            )
        if self.max_replica - self.min_replica + 1 < MIN_REPLICA_PORTS:
            raise ClusterError(
                f"Serve replica port range {self.min_replica}-{self.max_replica} needs at least "
                f"{MIN_REPLICA_PORTS} ports "
                "(HAProxy's stats and metrics, replica HTTP, replica gRPC); widen "
                "--min-replica-port/--max-replica-port."
            )
        if self.min_replica <= self.max_worker and self.min_worker <= self.max_replica:
            raise ClusterError(
                f"The Serve replica port range {self.min_replica}-{self.max_replica} overlaps the worker "
                f"port range {self.min_worker}-{self.max_worker}.",
                hint="Move one of them (--min/max-replica-port, --min/max-worker-port).",
            )


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

    @property
    def gcs_address(self) -> str:
        return f"{self.host}:{self.ports.gcs}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.ports.dashboard}"

    @property
    def serve_url(self) -> str:
        host = "127.0.0.1" if self.serve_host in ("0.0.0.0", "") else self.serve_host
        return f"http://{host}:{self.ports.serve}"


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


def forget_local_cluster(directory: Path | None = None) -> None:
    ((directory or state_dir()) / _CLUSTER_FILE).unlink(missing_ok=True)
