"""Prometheus for a cluster: the distribution's ``prometheus`` binary, configured and run by rayfleet.

Ray already exports Prometheus metrics on every node (its metrics agent; Serve's replicas and HAProxy,
Ray Train, and rayfleet's own metrics through ``ray.util.metrics`` go the same way) and keeps a
service-discovery file of those endpoints up to date on the head (``prom_metrics_service_discovery.json``
in Ray's temp dir: every node joins it by itself). Ray's ``ray metrics launch-prometheus`` downloads
Prometheus from the internet; rayfleet runs the one the machine has (Debian/Ubuntu: ``apt install
prometheus``) instead, with:

- a config that scrapes what that file lists every ``SCRAPE_INTERVAL_S`` s (and Prometheus itself);
- its data under ``DIR/data`` with bounded retention (``--storage.tsdb.retention.time``);
- the web UI/API on 127.0.0.1 only (a fleet reaches it through the same SSH tunnel as the dashboard).

``DIR`` is the cluster's ``prometheus/`` dir (the local cluster: under the state dir; a fleet: under
``~/.rayfleet/NAME/`` on the head). Prometheus runs in a session of its own, so the head's supervisor,
which stops what is left of a dead head, leaves it running; ``stop`` ends it by the PID recorded in
``DIR/prometheus.pid`` (with its start time, so a reused PID is never someone else's process).

Standard library only (and processes.py): a fleet's head runs it from ``rayfleet up`` over SSH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from rayfleet.cluster import processes

__all__ = ["DEFAULT_PORT", "SCRAPE_INTERVAL_S", "find_binary", "config_text", "start", "stop", "running",
           "ready", "sd_file", "MissingPrometheus", "StartFailed"]

DEFAULT_PORT = 9090
PLAN_FILE = "plan.json"
DIR_NAME = "prometheus"   # a cluster's Prometheus dir: ~/.rayfleet/NAME/prometheus on a fleet's head
SCRAPE_INTERVAL_S = 5
DEFAULT_RETENTION = "7d"
INSTALL_HINT = ("Install it: 'sudo apt install prometheus' (Debian/Ubuntu; rayfleet starts it, not the "
                "package's service), or name another binary with monitoring.prometheus_path.")
_PID_FILE = "prometheus.pid"
_READY_TIMEOUT_S = 60


class MissingPrometheus(Exception):
    """No Prometheus binary where the cluster looks for it."""


class StartFailed(Exception):
    """Prometheus did not start (the message has its log's last lines)."""


def sd_file(ray_temp_dir: str | Path) -> Path:
    """Ray's service-discovery file of the cluster's metrics endpoints (a link to the current session's)."""
    return Path(ray_temp_dir) / "prom_metrics_service_discovery.json"


def find_binary(path: str = "prometheus") -> str:
    """The Prometheus binary: ``path`` as given when it has a slash, else looked up on PATH (and
    /usr/bin, /usr/local/bin, where packages put it, for shells whose PATH lacks them)."""
    if "/" in path:
        p = Path(path).expanduser()
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
        raise MissingPrometheus(f"{p} is not an executable file")
    found = shutil.which(path) or shutil.which(path, path="/usr/bin:/usr/local/bin:/usr/sbin")
    if not found:
        raise MissingPrometheus(f"no '{path}' on PATH")
    return found


def config_text(sd: Path, port: int, scrape_interval_s: int = SCRAPE_INTERVAL_S, *, loopback: bool = False) -> str:
    """prometheus.yml: Ray's nodes (from its service-discovery file) and Prometheus itself. ``loopback``:
    every node is this machine (the local cluster), so each endpoint is scraped at 127.0.0.1 (Ray lists
    them at the machine's LAN address)."""
    relabel = ("  relabel_configs:\n"
               "  - source_labels: [__address__]\n"
               "    regex: '.*:(\\d+)'\n"
               "    target_label: __address__\n"
               "    replacement: '127.0.0.1:$1'\n") if loopback else ""
    return (
        "# Written by rayfleet; rewritten at every start.\n"
        "global:\n"
        f"  scrape_interval: {scrape_interval_s}s\n"
        f"  evaluation_interval: {scrape_interval_s}s\n"
        "scrape_configs:\n"
        "- job_name: ray\n"            # every node's metrics agent, the dashboard's and the autoscaler's
        "  file_sd_configs:\n"
        f"  - files: [{json.dumps(str(sd))}]\n"
        f"    refresh_interval: {scrape_interval_s}s\n"
        f"{relabel}"
        "- job_name: prometheus\n"
        "  static_configs:\n"
        f"  - targets: ['127.0.0.1:{port}']\n"
    )


def _pid_record(directory: Path) -> tuple[int, int] | None:
    try:
        raw = json.loads((directory / _PID_FILE).read_text())
        return int(raw["pid"]), int(raw["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, None when it does not run (or is a zombie)."""
    return processes.start_time(pid) if processes.is_running(pid) else None


def running(directory: Path) -> int | None:
    """The PID of the Prometheus that ``start`` started in ``directory``, if it still runs."""
    rec = _pid_record(directory)
    if rec is None:
        return None
    pid, start = rec
    return pid if _start_time(pid) == start else None


def ready(port: int, timeout_s: float = 2.0) -> bool:
    """Prometheus on 127.0.0.1:``port`` answers its readiness endpoint."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(directory: Path, *, binary: str, port: int, retention: str, sd: Path, loopback: bool = False,
          scrape_interval_s: int = SCRAPE_INTERVAL_S, env: dict[str, str] | None = None) -> int:
    """Start Prometheus (or keep the one running with the same port) and wait until it is ready; its PID.
    StartFailed with the log's tail."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid = running(directory)
    if pid is not None:
        if ready(port):
            return pid
        stop(directory)
    config = directory / "prometheus.yml"
    config.write_text(config_text(sd, port, scrape_interval_s, loopback=loopback))
    log_path = directory / "prometheus.log"
    args = [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
            f"--storage.tsdb.retention.time={retention}", f"--web.listen-address=127.0.0.1:{port}"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    start_ticks = _start_time(proc.pid) or 0
    (directory / _PID_FILE).write_text(json.dumps({"pid": proc.pid, "start": start_ticks, "port": port}))
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not ready(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            (directory / _PID_FILE).unlink(missing_ok=True)
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
            raise StartFailed(f"Prometheus ({binary}) did not start on 127.0.0.1:{port}"
                              f"{'' if proc.returncode is None else f' (exit {proc.returncode})'}; its log "
                              f"{log_path} ends with:\n{tail}")
        time.sleep(0.2)
    return proc.pid


def stop(directory: Path, timeout_s: float = 15.0) -> bool:
    """End the Prometheus ``start`` started in ``directory`` (SIGTERM: it writes its data out; SIGKILL
    after ``timeout_s``). True if one was running. Its plan is forgotten: nothing starts it again."""
    (directory / PLAN_FILE).unlink(missing_ok=True)
    pid = running(directory)
    if pid is None:
        (directory / _PID_FILE).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _start_time(pid) is not None and processes.is_running(pid):   # (a zombie is gone)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)
    (directory / _PID_FILE).unlink(missing_ok=True)
    return True


def ensure(plan: dict) -> str:
    """What a fleet's head runs at every ``up`` (``python -m rayfleet.cluster.monitoring ensure PLAN``):
    Prometheus started, or kept when it runs with the same settings, or started again with new ones.
    ``plan``: dir, port, retention, binary, sd (``~/`` expanded here). One line saying what it did.
    The plan stays in ``DIR/plan.json`` until ``stop``: the head's supervisor, started again after a
    reboot, ensures it too (supervisor.py)."""
    directory = Path(os.path.expanduser(plan["dir"]))
    settings = {k: plan[k] for k in ("port", "retention", "binary", "sd")}
    try:
        before = json.loads((directory / "settings.json").read_text())
    except (OSError, ValueError):
        before = None
    pid = running(directory)
    if pid is not None and before == settings and ready(plan["port"]):
        (directory / PLAN_FILE).write_text(json.dumps(plan))
        return f"running (PID {pid}) on 127.0.0.1:{plan['port']}"
    if pid is not None:
        stop(directory)
    pid = start(directory, binary=find_binary(plan["binary"]), port=int(plan["port"]), retention=plan["retention"],
                sd=Path(os.path.expanduser(plan["sd"])))
    (directory / "settings.json").write_text(json.dumps(settings))
    (directory / PLAN_FILE).write_text(json.dumps(plan))   # for the head's supervisor, after a reboot
    return f"{'started again' if before else 'started'} (PID {pid}) on 127.0.0.1:{plan['port']}"


def main(argv: list[str]) -> int:
    """``ensure PLAN_JSON`` | ``stop DIR``: one line on stdout, or ``error: ...`` on stderr and exit 1."""
    import sys

    try:
        if len(argv) == 2 and argv[0] == "ensure":
            print(ensure(json.loads(argv[1])))
            return 0
        if len(argv) == 2 and argv[0] == "stop":
            print("stopped" if stop(Path(os.path.expanduser(argv[1]))) else "not running")
            return 0
    except MissingPrometheus as e:
        print(f"error: no Prometheus on this node: {e}. {INSTALL_HINT}", file=sys.stderr)
        return 1
    except StartFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("usage: python -m rayfleet.cluster.monitoring ensure PLAN_JSON | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
