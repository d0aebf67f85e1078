"""``fleet.yaml``: the machines of an on-prem Ray cluster, and how to reach them."""

from __future__ import annotations

import functools
import getpass
import ipaddress
import re
import shlex
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from rayfleet.config.ports import DEFAULTS, RANGES, port_problem
from rayfleet.config.base import Model
from rayfleet.config.monitoring import MonitoringSpec
from rayfleet.errors import HostNotResolved

__all__ = [
    "FleetSpec", "NodeSpec", "SSHSpec", "ResourcesSpec", "PortsSpec", "AutoscaleSpec",
    "StorageSpec", "SecuritySpec", "RuntimeSpec", "HeadRecoverySpec", "RedisSpec", "resolve_host", "shell_path",
]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
Port = Annotated[int, Field(ge=1, le=65535)]


class SSHSpec(Model):
    """How rayfleet (and Ray's launcher on the head) log in to a node."""

    user: str | None = Field(default=None, description="SSH user (default: the user running rayfleet).")
    key: str | None = Field(default=None, description="Private key file (default: ~/.ssh/id_ed25519).")
    port: Port | None = Field(default=None, description="SSH port (default: 22).")

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        # It goes into ssh's command line and the nodes' shell commands: a plain user name only.
        if v is not None and not _USER.match(v):
            raise ValueError("expected a user name such as 'rayfleet' (letters, digits, '_', '.', '-'; "
                             "not starting with '-')")
        return v


class ResourcesSpec(Model):
    """What Ray may use on a node. Unset: Ray detects it."""

    num_cpus: Annotated[int, Field(ge=0, le=4096)] | None = Field(default=None, description="CPUs for Ray.")
    num_gpus: Annotated[int, Field(ge=0, le=64)] | None = Field(default=None, description="GPUs for Ray.")
    object_store_memory: Annotated[int, Field(ge=78643200)] | None = Field(
        default=None, description="Object store size in bytes (>= 75 MiB).")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom resources, e.g. {fast_disk: 1}.")


@functools.lru_cache(maxsize=None)
def resolve_host(host: str) -> str:
    """The address of ``host`` as this machine resolves it (IPv4 first); an address is itself.
    Resolved once per process: Ray is told this address and nodes are matched by it everywhere."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise HostNotResolved(host, getattr(e, "strerror", None) or str(e)) from None
    v4 = [info[4][0] for info in infos if info[0] == socket.AF_INET]
    return (v4 or [infos[0][4][0]])[0]


class NodeSpec(Model):
    """One machine."""

    host: str = Field(description="IP address or DNS name the other nodes reach it at.")
    ssh: SSHSpec = Field(default_factory=SSHSpec, description="Per-node SSH overrides.")
    resources: ResourcesSpec | None = Field(default=None, description="Per-node resources (overrides the fleet's).")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
            return v
        except ValueError:
            pass
        if not _HOST.match(v):
            raise ValueError("expected an IP address or a host name such as 'gpu-1.lan'")
        return v

    @property
    def address(self) -> str:
        """The node's address (``host`` resolved on this machine); ConfigError when a name doesn't resolve."""
        return resolve_host(self.host)

    @property
    def label(self) -> str:
        """``gpu1.lan (10.0.0.2)`` for a name, the address alone for an address."""
        address = self.address
        return self.host if address == self.host else f"{self.host} ({address})"


class PortsSpec(Model):
    """Ports on the nodes. Defaults are Ray's, except Serve's HTTP port."""

    gcs: Port = Field(default=DEFAULTS["gcs"], description="GCS (the cluster address) on the head.")
    dashboard: Port = Field(default=DEFAULTS["dashboard"], description="Dashboard and Jobs API on the head.")
    serve: Port = Field(default=DEFAULTS["serve"], description="Serve HTTP on every node.")
    client_server: Port = Field(default=DEFAULTS["client_server"], description="Ray Client server on the head.")
    dashboard_agent: Port = Field(default=DEFAULTS["dashboard_agent"],
                                  description="Dashboard agent HTTP on every node.")
    node_manager: Port = Field(default=6380, description="Raylet on every node.")
    object_manager: Port = Field(default=6381, description="Object manager on every node.")
    metrics_export: Port = Field(default=6382, description="Metrics on every node.")
    runtime_env_agent: Port = Field(default=6383, description="Runtime env agent on every node.")
    dashboard_agent_grpc: Port = Field(default=6384, description="Dashboard agent gRPC on every node.")
    dashboard_metrics: Port = Field(default=44227, description="The dashboard's Prometheus metrics on the head.")
    autoscaler_metrics: Port = Field(default=44217, description="The autoscaler's Prometheus metrics on the head.")
    min_worker: Port = Field(default=DEFAULTS["min_worker"], description="Lowest worker port.")
    # 1,000 ports, not Ray's 10,000: a fleet's firewall opens this range between the nodes.
    max_worker: Port = Field(default=10999, description="Highest worker port.")
    min_replica: Port = Field(default=DEFAULTS["min_replica"],
                              description="Lowest port of the Serve range on every node: HAProxy's "
                              "stats, its metrics, then the replicas' HTTP and gRPC ports.")
    max_replica: Port = Field(default=DEFAULTS["max_replica"], description="Highest Serve replica port on every node.")

    @model_validator(mode="after")
    def _distinct(self) -> "PortsSpec":
        problem = port_problem(self.model_dump(), lambda field: f"ports.{field}")
        if problem:
            raise ValueError(" ".join(p for p in problem if p))
        return self

    def fixed(self) -> dict[str, int]:
        """Every single port (not the worker or replica ranges)."""
        return {k: v for k, v in self.model_dump().items() if k not in RANGES}

    def using(self, port: int) -> list[str]:
        """What of Ray's uses ``port`` already, as fleet.yaml names it (``ports.gcs``, ``ports.min_worker..max_worker``)."""
        taken = [f"ports.{k}" for k, v in self.fixed().items() if v == port]
        return taken + [f"ports.{lo}..{hi}" for lo, hi in (("min_worker", "max_worker"), ("min_replica", "max_replica"))
                        if getattr(self, lo) <= port <= getattr(self, hi)]


class AutoscaleSpec(Model):
    """Ray's autoscaler. Default: every worker always on."""

    min_workers: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Workers kept up (default: all).")
    max_workers: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Most workers (default: all).")
    idle_timeout_minutes: Annotated[float, Field(gt=0)] = Field(
        default=5, description="Idle minutes before a worker above min_workers is stopped.")


class StorageSpec(Model):
    """A directory mounted at the same path on every node (NFS or similar)."""

    path: str = Field(description="Absolute path, the same on every node.")

    @field_validator("path")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must be an absolute path, e.g. '/mnt/{v}'")
        return v


class SecuritySpec(Model):
    """Cluster security. Token auth is on unless you turn it off (don't)."""

    auth: Literal["token", "disabled"] = Field(default="token", description="Ray token authentication.")
    tls: bool = Field(
        default=True, description="Mutual TLS on Ray's gRPC between the nodes (RAY_USE_TLS), with a CA and node "
                                  "certificates rayfleet makes for the fleet. Off: the token and all cluster "
                                  "traffic cross the LAN in clear text.")
    dashboard_host: str | None = Field(
        default=None, description="Address the dashboard (and Jobs API) binds to on the head (default: 127.0.0.1, "
                                  "reached through an SSH tunnel; the head's address opens it to the LAN).")
    serve_host: str | None = Field(
        default=None, description="Where clients reach the services (default: the head's address, one HTTP "
                                   "proxy on the head); 0.0.0.0 runs a proxy on every node.")


class RedisSpec(Model):
    """Redis as the head's store: one rayfleet runs (the distribution's redis-server, on a node of the
    fleet), or your own (``url``)."""

    host: str | None = Field(
        default=None, description="The node (its host as written in fleet.yaml) where rayfleet runs redis-server "
                                  "(default: the head). On another node the state outlives the head machine.")
    port: int = Field(default=6390, ge=1, le=65535,
                      description="The port of rayfleet's Redis on that node (not one of ports:).")
    url: str | None = Field(
        default=None, description="Your own Redis instead: redis://[USER@]HOST:PORT, or rediss://... for TLS.")
    password_file: str | None = Field(
        default=None, description="With url: a file on this machine that holds its password (first line).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme, sep, rest = v.partition("://")
        user, _, hostport = rest.rpartition("@")
        host, _, port = hostport.rpartition(":")
        if not sep or scheme not in ("redis", "rediss") or not host or not port.isdigit() or "/" in hostport:
            raise ValueError(f"{v!r} is not a Redis URL: use redis://HOST:PORT (or rediss:// for TLS), "
                             "e.g. 'redis://redis.lan:6379'")
        if ":" in user:
            raise ValueError("put the password in the file named by password_file, not in the URL "
                             "(fleet.yaml is often shared)")
        return v

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"{v} does not exist on this machine (a file holding the Redis password)")
        return v

    @model_validator(mode="after")
    def _one_redis(self) -> "RedisSpec":
        if self.url and self.host:
            raise ValueError("set either host (rayfleet runs Redis on that node) or url (your own Redis), not both")
        if self.password_file and not self.url:
            raise ValueError("password_file is for your own Redis (url); rayfleet makes the password of its own")
        return self


class HeadRecoverySpec(Model):
    """What happens when the head's Ray dies (crash, OOM, kill): with a store, the GCS keeps the cluster's
    state there and a supervisor on the head starts it again within seconds; workers rejoin as the same
    nodes and services come back by themselves."""

    store: Literal["rocksdb", "redis", "off"] = Field(
        default="rocksdb", description="rocksdb: the GCS's state in RocksDB on the head's local disk; redis: in "
                                       "Redis (see redis); either way the head is supervised (restarted when it "
                                       "dies). off: neither.")
    path: str | None = Field(
        default=None, description="The RocksDB directory on the head, on a local disk, not NFS (default: "
                                  "~/.rayfleet/NAME/gcs-store).")
    redis: RedisSpec = Field(default_factory=RedisSpec,
                             description="With store: redis: which Redis (default: rayfleet runs one on the head).")
    supervisor: Literal["auto", "systemd", "watchdog"] = Field(
        default="auto", description="What runs the head's supervisor. systemd: a unit (a system unit for root, "
                                    "else a user unit) that systemd restarts and starts at boot; watchdog: "
                                    "rayfleet's own process, while the machine runs; auto: systemd where the "
                                    "head has it, else the watchdog.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        # `head_recovery: off` (YAML reads it as false), `head_recovery: rocksdb` or `redis`
        if v is False or v == "off":
            return {"store": "off"}
        if isinstance(v, str):
            return {"store": v}
        return v

    @field_validator("store", mode="before")
    @classmethod
    def _off(cls, v):
        return "off" if v is False else v   # YAML reads a bare `off` as false

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return None if v is None else _node_path(v, "~/.rayfleet/lab/gcs-store")

    @model_validator(mode="after")
    def _fits_the_store(self) -> "HeadRecoverySpec":
        if self.path and self.store != "rocksdb":
            raise ValueError(f"path is RocksDB's directory, but store is {self.store}: remove path, or set "
                             "store: rocksdb")
        if self.store == "off" and "supervisor" in self.model_fields_set:
            raise ValueError("supervisor is set, but store is off (nothing is supervised): remove supervisor, or "
                             "set store: rocksdb")
        if self.store != "redis" and self.redis.model_fields_set:
            raise ValueError(f"redis is set, but store is {self.store}: set store: redis, or remove redis")
        return self


def shell_path(path: str) -> str:
    """``path`` as one shell word for the nodes' shell: ``~/x`` becomes ``"$HOME"/'x'`` (the SSH
    user's home on that node), anything else is quoted as it is."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _node_path(v: str, example: str) -> str:
    if not (v.startswith("/") or v == "~" or v.startswith("~/")):
        raise ValueError(f"must be an absolute path on the nodes or start with '~/', e.g. '{example}'")
    return v.rstrip("/") or "/"


class RuntimeSpec(Model):
    """The runtime rayfleet installs on every node (a venv with exactly this machine's versions of
    rayfleet and its libraries), unless ``python:`` names a venv of your own."""

    path: str = Field(default="~/.rayfleet/runtime",
                      description="Where runtimes live on the nodes ('~/' = the SSH user's home); "
                                  "each one in a subdirectory named by its lock hash.")
    extra_requirements: list[str] = Field(
        default_factory=list,
        description="More packages for your own jobs and apps (pip requirement strings or wheel files "
                    "of this machine), installed with the same wheelhouse, offline on the nodes.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _node_path(v, "~/.rayfleet/runtime")

    @field_validator("extra_requirements")
    @classmethod
    def _reqs(cls, v: list[str]) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement
        for r in v:
            if r.endswith(".whl"):
                if not Path(r).expanduser().is_file():
                    raise ValueError(f"wheel file {r} does not exist on this machine")
                continue
            try:
                Requirement(r)
            except InvalidRequirement as e:
                raise ValueError(f"{r!r} is not a pip requirement ({e}); e.g. 'scikit-learn==1.5.2'") from None
        return v


class FleetSpec(Model):
    """An on-prem Ray cluster: a head and workers reached over SSH."""

    name: str = Field(description="Cluster name (lowercase letters, digits, '-').")
    head: NodeSpec = Field(description="The head node (GCS, dashboard, autoscaler).")
    workers: list[NodeSpec] = Field(default_factory=list, description="Worker nodes.")
    ssh: SSHSpec = Field(default_factory=SSHSpec, description="SSH defaults for every node.")
    python: str | None = Field(
        default=None, description="A venv of your own on the nodes (holds bin/python and bin/ray, same path "
                                  "everywhere), used as it is. Default: the runtime rayfleet installs.")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec,
                                 description="The runtime rayfleet installs on the nodes (when no python:).")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per-node resources for every node.")
    ports: PortsSpec = Field(default_factory=PortsSpec, description="Ports on the nodes.")
    temp_dir: str = Field(default="/tmp/rayfleet", description="Ray's temp dir on every node.")
    autoscale: AutoscaleSpec = Field(default_factory=AutoscaleSpec, description="Autoscaling of workers.")
    storage: StorageSpec | None = Field(default=None, description="Shared storage for training and the registry.")
    security: SecuritySpec = Field(default_factory=SecuritySpec, description="Auth and bind addresses.")
    head_recovery: HeadRecoverySpec = Field(default_factory=HeadRecoverySpec,
                                            description="Keep the cluster's state and restart a dead head.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec,
                                       description="Prometheus for the fleet, on the head (off by default).")
    setup_commands: list[str] = Field(default_factory=list, description="Shell commands run on every node before Ray starts.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use lowercase letters, digits and '-', at most 32 characters, e.g. 'lab'")
        return v

    @field_validator("temp_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path on the nodes, e.g. '/tmp/rayfleet'")
        return v.rstrip("/") or "/"

    @field_validator("python")
    @classmethod
    def _venv(cls, v: str | None) -> str | None:
        return None if v is None else _node_path(v, "/opt/rayfleet/.venv")

    @model_validator(mode="after")
    def _check(self) -> "FleetSpec":
        hosts = [self.head.host] + [w.host for w in self.workers]
        dupes = sorted({h for h in hosts if hosts.count(h) > 1})
        if dupes:
            raise ValueError(f"host {dupes[0]} is listed twice; each node once")
        n = len(self.workers)
        lo, hi = self.autoscale.min_workers, self.autoscale.max_workers
        if hi is not None and hi > n:
            raise ValueError(f"autoscale.max_workers is {hi} but only {n} workers are listed")
        if lo is not None and lo > (hi if hi is not None else n):
            raise ValueError(f"autoscale.min_workers ({lo}) exceeds max_workers ({hi if hi is not None else n})")
        redis_host = self.head_recovery.redis.host
        if self.head_recovery.store == "redis" and redis_host is not None and redis_host not in hosts:
            raise ValueError(f"head_recovery.redis.host is {redis_host}, not a node of this fleet: name one "
                             f"of {', '.join(hosts)} as written here, or use url: for a Redis of your own")
        port = self.head_recovery.redis.port
        if self.head_recovery.store == "redis" and not self.head_recovery.redis.url and (taken := self.ports.using(port)):
            raise ValueError(f"head_recovery.redis.port {port} is also {taken[0]}: give Redis another port")
        if self.monitoring.enabled and (taken := self.ports.using(self.monitoring.port)):
            raise ValueError(f"monitoring.port {self.monitoring.port} is also {taken[0]}: give Prometheus another port")
        dashboard = self.dashboard_bind
        if self.security.auth == "disabled" and not _loopback(dashboard):
            raise ValueError(f"security.auth: disabled with the dashboard on {dashboard}: anyone who reaches it "
                             "could run code on every node. Keep token auth (remove 'auth: disabled'), or put the "
                             "dashboard on loopback (security.dashboard_host: 127.0.0.1)")
        return self

    # Effective values ----------------------------------------------------
    @property
    def dashboard_bind(self) -> str:
        """Where the dashboard listens on the head (loopback unless security.dashboard_host says otherwise)."""
        return self.security.dashboard_host or "127.0.0.1"

    @property
    def dashboard_tunneled(self) -> bool:
        """The dashboard is on the head's loopback: rayfleet reaches it through an SSH tunnel."""
        return _loopback(self.dashboard_bind)

    @property
    def nodes(self) -> list[NodeSpec]:
        return [self.head, *self.workers]

    def node(self, host: str) -> NodeSpec | None:
        """The node written as ``host`` in fleet.yaml, or at that address."""
        for n in self.nodes:
            if host == n.host:
                return n
        for n in self.nodes:
            try:
                if host == n.address:
                    return n
            except HostNotResolved:
                continue
        return None

    def ssh_for(self, node: NodeSpec) -> tuple[str, str, int]:
        """(user, key path, port) for a node: its overrides, else the fleet's, else defaults."""
        user = node.ssh.user or self.ssh.user or getpass.getuser()
        key = node.ssh.key or self.ssh.key or "~/.ssh/id_ed25519"
        port = node.ssh.port or self.ssh.port or 22
        return user, str(Path(key).expanduser()), port

    def resources_for(self, node: NodeSpec) -> ResourcesSpec:
        return node.resources or self.resources

    @property
    def min_workers(self) -> int:
        return len(self.workers) if self.autoscale.min_workers is None else self.autoscale.min_workers

    @property
    def max_workers(self) -> int:
        return len(self.workers) if self.autoscale.max_workers is None else self.autoscale.max_workers

    @property
    def shipped(self) -> bool:
        """rayfleet installs the nodes' runtime (no ``python:`` of the user's own)."""
        return self.python is None

    @property
    def venv(self) -> str:
        """The nodes' venv as fleet.yaml would write it: ``python:``, else the runtime of this
        machine's lock (``runtime.path``/<lock hash>)."""
        if self.python is not None:
            return self.python
        from rayfleet.cluster.runtime import local_lock   # the lock of the environment running rayfleet
        return f"{self.runtime.path}/{local_lock(tuple(self.runtime.extra_requirements)).digest}"

    @property
    def venv_sh(self) -> str:
        """The nodes' venv as one word of a remote shell command."""
        return shell_path(self.venv)

    @property
    def ray_cli(self) -> str:
        """The ``ray`` CLI of the nodes' venv, as shell text (the one locator for remote commands)."""
        return f"{self.venv_sh}/bin/ray"

    @property
    def auth_enabled(self) -> bool:
        return self.security.auth == "token"
