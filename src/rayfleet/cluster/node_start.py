"""Start Ray on one node of a fleet: what the cluster launcher's start commands and ``rayfleet up``'s
fast worker start run there, with the venv's Python (``launcher.start_command`` renders the call)::

    <venv>/bin/python -m rayfleet.cluster.node_start head|worker|updater '<json plan>'

The plan (``NodePlan``) is rendered on the machine that runs rayfleet from fleet.yaml; everything
that depends on the node is found here: its address (the one it was reached at over SSH), its
resource flags (chosen by that address), the interface Gloo must use, and which Ray runs already.

- ``head``: ``ray stop`` (and the cluster's HAProxy: ``_stop_ray``) and ``ray start --head``; with head
  recovery, run by the head's supervisor on a fresh RocksDB store (``supervisor.py``).
- ``worker SESSION`` (``rayfleet up`` starts workers itself, as soon as the head is up, rather
  than waiting ~15-20 s for the v1 autoscaler): nothing if a raylet of that head and session runs
  here already, else ``ray stop`` (when any Ray runs) and ``ray start``; then a one-shot mark
  (the session's name) for the autoscaler's updater.
- ``updater`` (the launcher's worker start command): skips the restart only when that mark is
  fresh (``MARK_TTL_S``) and a raylet of exactly that session and head runs; it always removes the
  mark. Without one (plain ``ray up``, autoscaling, recovery) it is Ray's usual stop + start.

The worker modes hold a lock (``<mark>.lock``) so rayfleet and the updater never start Ray at once.
Python's standard library only (and ``rayfleet._compat.ray``'s names): nothing imports Ray here.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NotRequired, TypedDict

from rayfleet._compat.ray import RAYLET_COMMAND, raylet_args
from rayfleet.cluster.serving import private_dir

if TYPE_CHECKING:
    from rayfleet.cluster.redis_store import RedisPlan

__all__ = ["NodePlan", "MARK_TTL_S", "main"]

MARK_TTL_S = 180
SUPERVISOR_MODULE = "rayfleet.cluster.supervisor"
LOCK_WAIT_S = 300
OPEN_FILES = 65536
SESSION = re.compile(r"session_[\w.-]+")
ANY_RAY = re.compile(r"raylet|gcs_server|ray::")   # what `ray stop` would find


class Supervise(TypedDict):
    """Head recovery (``head_recovery:`` in fleet.yaml): where the head's supervisor keeps its files and
    the GCS its store, on the head."""
    dir: str        # the supervisor's spec, pid, log, restart record ("~/" expanded here)
    store: str      # RocksDB directory of the GCS ("" with Redis)
    cluster: str    # the fleet's name
    redis: NotRequired[RedisPlan]   # the GCS's store in Redis instead (redis_store.py)
    supervisor: NotRequired[str]    # auto (default), systemd or watchdog: what runs the supervisor


class NodePlan(TypedDict):
    head: str                          # the head's GCS address, host:port
    ray_start: list[str]               # `ray start` flags every node gets (no address, no resources)
    head_start: list[str]              # the head's extra flags
    resources: dict[str, list[str]]    # node address -> resource flags
    default_resources: list[str]
    env: dict[str, str]                # environment of every Ray process ("~/" expanded here)
    temp_dir: str
    private_dirs: list[str]            # created 0700 before Ray starts (HAProxy's files and sockets)
    mark: str                          # the one-shot mark's path
    supervise: Supervise | None        # the head: run by a supervisor on a RocksDB store (None: head_recovery off)


def node_ip() -> str:
    """The address this node was reached at: ssh sets ``SSH_CONNECTION="client cport server sport"``."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    return parts[2] if len(parts) == 4 else ""


def _interface_of(ip: str) -> str | None:
    """The network interface that holds ``ip`` (iproute2's ``ip -o addr``)."""
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == ip:
            return fields[1].split("@")[0]
    return None


def _environment(plan: NodePlan, ip: str) -> dict[str, str]:
    env = dict(os.environ)
    # The venv first on PATH: job entrypoints ('python ...') must find Ray and rayfleet.
    env["PATH"] = f"{sys.prefix}/bin:{env.get('PATH', '/usr/bin:/bin')}"
    env.update({k: os.path.expanduser(v) for k, v in plan["env"].items()})
    # Gloo (PyTorch DDP on CPUs) advertises the address its host name resolves to; where that is
    # loopback (Debian's "127.0.1.1 HOSTNAME", containers) ranks on other nodes can't connect. Every
    # Ray process gets the interface that holds the node's address, unless one is set already.
    iface = _interface_of(ip) if ip else None
    if iface and not env.get("GLOO_SOCKET_IFNAME"):
        env["GLOO_SOCKET_IFNAME"] = iface
    return env


def _raise_open_files() -> None:
    """As `ulimit -n 65536` did: up to the hard limit where we may not raise that."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, max(OPEN_FILES, hard)
                                                    if hard != resource.RLIM_INFINITY else hard))
    except (ValueError, OSError):
        soft = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _command_lines_by_pid() -> Iterator[tuple[int, list[str]]]:
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(proc.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _command_lines() -> Iterator[list[str]]:
    return (args for _, args in _command_lines_by_pid())


def raylet_runs(plan: NodePlan, session: str) -> bool:
    """A raylet of this head and of ``session`` runs here."""
    gcs_arg, session_arg = raylet_args(plan["head"], session)
    lines = (" " + " ".join(args) + " " for args in _command_lines())
    return any(RAYLET_COMMAND in ln and f" {gcs_arg} " in ln and f" {session_arg} " in ln for ln in lines)


def any_ray_runs() -> bool:
    return any(ANY_RAY.search(" ".join(args)) for args in _command_lines())


@contextmanager
def _locked(plan: NodePlan) -> Iterator[None]:
    Path(plan["temp_dir"]).mkdir(parents=True, exist_ok=True)
    with open(plan["mark"] + ".lock", "a") as f:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break   # a stuck holder: go on, as `flock -w` did
                time.sleep(0.2)
        yield   # the file is closed (and unlocked) on exit; Ray's daemons don't inherit it (close_fds)


def _ray(*args: str, env: dict[str, str] | None = None) -> int:
    return subprocess.run([f"{sys.prefix}/bin/ray", *args], env=env).returncode


def _stop_ray(plan: NodePlan) -> None:
    """``ray stop --force``, and Serve's HAProxy of this cluster: Ray starts it without a parent-death
    signal, so it outlives ``ray stop`` and keeps the services' port, and the next Serve's HAProxy can't
    bind it ("Address already in use"). Found by its config in the cluster's private HAProxy dir."""
    _ray("stop", "--force")
    _stop_haproxy(plan)


def _stop_haproxy(plan: NodePlan) -> None:
    marks = [d.rstrip("/") + "/" for d in plan["private_dirs"]]
    for pid, args in _command_lines_by_pid():
        if "haproxy" in args[0] and any(m in " ".join(args) for m in marks):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def start(plan: NodePlan, *, head: bool) -> int:
    ip = node_ip()
    flags = [f"--node-ip-address={ip}", *plan["ray_start"], *plan["resources"].get(ip, plan["default_resources"])]
    flags = ["--head", *plan["head_start"], *flags] if head else [f"--address={plan['head']}", *flags]
    _raise_open_files()
    for path in plan["private_dirs"]:
        try:
            private_dir(path)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    home = os.path.expanduser("~")
    flags = [f.replace("=~/", f"={home}/", 1) for f in flags]
    if head and plan.get("supervise"):
        return _start_supervised(plan, flags, _environment(plan, ip))
    return _ray("start", *flags, env=_environment(plan, ip))


def _supervisor_files(sup: Supervise) -> tuple[Path, Path, Path]:
    d = Path(os.path.expanduser(sup["dir"]))
    return d, d / "record.json", d / "supervisor.pid"


def end_supervisor(plan: NodePlan) -> None:
    """Stop the head's supervisor (before Ray is stopped: it would start the head again). Its record goes
    first (a supervisor without one ends by itself), then SIGTERM by PID, if that PID is a supervisor."""
    sup = plan.get("supervise")
    if not sup:
        return
    from rayfleet.cluster.systemd_unit import stop_shell

    _, record, pidfile = _supervisor_files(sup)
    record.unlink(missing_ok=True)
    subprocess.run(["sh", "-c", stop_shell(sup["cluster"])], stdin=subprocess.DEVNULL)   # its unit, if any
    try:
        pid = int(pidfile.read_text())
        if SUPERVISOR_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    pidfile.unlink(missing_ok=True)


def _fresh_redis_store(r: RedisPlan, env: dict[str, str], flags: list[str]) -> str:
    """The head's GCS on Redis: Ray's variables into ``env``, its password flags onto ``flags``, and the
    cluster's keys of an earlier head deleted. Returns what went wrong ("" when nothing did)."""
    from rayfleet.cluster.redis_store import ping

    path = Path(os.path.expanduser(r["password_file"]))
    try:
        password = path.read_text().strip()
    except OSError as e:
        return f"can't read Redis's password ({path}: {e.strerror}); 'rayfleet up' puts it there"
    ssl_files = {k: os.path.expanduser(v) for k, v in r["env"].items()}
    problem = ping(r["url"], password, r["username"], ssl_files=ssl_files)
    if problem:
        return (f"the head can't use its store, Redis at {r['url']} (head_recovery.redis): {problem}. Check "
                "that it runs and that the password is right")
    env.update(ssl_files, RAY_REDIS_ADDRESS=r["url"], RAY_external_storage_namespace=r["namespace"])
    os.environ.update(ssl_files)   # Ray's Redis client below reads its TLS files from the environment
    from ray._private.gcs_utils import cleanup_redis_storage

    scheme, hostport = r["url"].split("://", 1)
    host, _, port = hostport.rpartition(":")
    cleanup_redis_storage(host, int(port), password, scheme == "rediss", r["namespace"], r["username"] or None)
    if password:
        flags.append(f"--redis-password={password}")
    if r["username"]:
        flags.append(f"--redis-username={r['username']}")
    return ""


def _start_supervised(plan: NodePlan, flags: list[str], env: dict[str, str]) -> int:
    """``ray start --head`` run by the head's supervisor (``supervisor.py``) on a fresh RocksDB store: it
    starts the head again, on that store, whenever the head's GCS or raylet dies."""
    import shutil
    import uuid

    from rayfleet.cluster.processes import MARKER_ENV
    from rayfleet.cluster.supervisor import HeadSpec, ask_to_start, spawn

    sup = plan["supervise"]
    d, record, pidfile = _supervisor_files(sup)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster_id = f"{sup['cluster']}-{uuid.uuid4().hex[:8]}"
    env = dict(env, **{MARKER_ENV: cluster_id})
    # A new head: a new cluster (the store serves its restarts).
    if "redis" in sup:
        problem = _fresh_redis_store(sup["redis"], env, flags)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
    else:
        store = Path(os.path.expanduser(sup["store"]))
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True, mode=0o700)
        env.update(RAY_gcs_storage="rocksdb", RAY_gcs_storage_path=str(store))
    (d / "restarts.json").unlink(missing_ok=True)
    unit, why_not = _unit(sup)
    if unit is None and sup.get("supervisor") == "systemd":
        print(f"error: head_recovery.supervisor is systemd, but {why_not}. Set head_recovery.supervisor: auto "
              "(rayfleet's watchdog where there is no systemd)", file=sys.stderr)
        return 1
    from rayfleet.cluster import monitoring

    spec = HeadSpec(cluster_id=cluster_id, args=[f"{sys.prefix}/bin/ray", "start", *flags],
                    log=str(d / "ray-start.log"), restarts=str(d / "restarts.json"), record=str(record),
                    gcs_address=plan["head"], env=_unit_env(env) if unit else {},
                    monitoring_dir=str(d.parent / monitoring.DIR_NAME))   # as fleet_monitoring.monitoring_dir
    spec.save(d / "head.json")
    if unit is not None:
        from rayfleet.cluster import systemd_unit

        ask_to_start(spec)
        text = systemd_unit.unit_text(unit, str(d / "head.json"), str(d / "supervisor.log"),
                                      f"rayfleet: the head of Ray cluster {sup['cluster']}, restarted when it dies")
        pid, line = systemd_unit.install_and_start(unit, text)
        supervised = {"by": "systemd", **unit.describe()}
    else:
        pid, line = spawn(d / "head.json", env, d / "supervisor.log", timeout_s=180)
        supervised = {"by": "watchdog", "why_not": why_not if sup.get("supervisor") != "watchdog"
                      else "head_recovery.supervisor: watchdog"}
    (d / "supervised.json").write_text(json.dumps(supervised))
    pidfile.write_text(f"{pid}\n")
    log = Path(spec.log).read_text(errors="replace") if Path(spec.log).exists() else ""
    sys.stdout.write(log)
    if line != "started":
        if unit is not None:   # not started again and again by systemd
            from rayfleet.cluster.systemd_unit import stop_shell

            subprocess.run(["sh", "-c", stop_shell(sup["cluster"])], stdin=subprocess.DEVNULL)
        print(f"error: ray start --head failed under the head's supervisor ({line or 'no answer'}); "
              f"see {spec.log} and {d / 'supervisor.log'}", file=sys.stderr)
        return 1
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cluster_id": cluster_id, "pid": pid}))
    tmp.replace(record)
    return 0


def _unit(sup: Supervise):
    """The systemd unit the supervisor runs as (systemd_unit.Unit), or None and why not."""
    from rayfleet.cluster import systemd_unit

    if sup.get("supervisor") == "watchdog":
        return None, ""
    return systemd_unit.find(sup["cluster"])


_SESSION_ONLY = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "SSH_AUTH_SOCK", "SHLVL", "OLDPWD", "PWD", "_",
                 "NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM", "MAIL", "TERM")


def _unit_env(env: dict[str, str]) -> dict[str, str]:
    """The environment ``ray start`` had in this SSH session, for the unit's supervisor (systemd gives
    its services a bare one), less what belongs to the session."""
    return {k: v for k, v in env.items() if k not in _SESSION_ONLY}


def run(mode: str, plan: NodePlan, session: str | None = None) -> int:
    if mode == "head":
        end_supervisor(plan)
        _stop_ray(plan)
        return start(plan, head=True)
    mark = Path(plan["mark"])
    with _locked(plan):
        if mode == "worker":
            assert session is not None
            if raylet_runs(plan, session):
                print("Ray of this session already runs here")
                return 0
            if any_ray_runs():
                _stop_ray(plan)
            else:
                _stop_haproxy(plan)   # one left by a Ray that died
            rc = start(plan, head=False)
            if rc == 0:
                mark.write_text(session + "\n")
            return rc
        try:
            fresh = time.time() - mark.stat().st_mtime < MARK_TTL_S
            started = mark.read_text().strip()
        except OSError:
            fresh, started = False, ""
        mark.unlink(missing_ok=True)
        if fresh and SESSION.fullmatch(started) and raylet_runs(plan, started):
            print("rayfleet up started Ray here moments ago for this head: not restarting it")
            return 0
        _stop_ray(plan)
        return start(plan, head=False)


def main(argv: list[str]) -> int:
    usage = "usage: python -m rayfleet.cluster.node_start head|updater PLAN | worker SESSION PLAN"
    if len(argv) == 2 and argv[0] in ("head", "updater"):
        mode, session, raw = argv[0], None, argv[1]
    elif len(argv) == 3 and argv[0] == "worker" and SESSION.fullmatch(argv[1]):
        mode, session, raw = argv
    else:
        print(usage, file=sys.stderr)
        return 2
    return run(mode, json.loads(raw), session)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
