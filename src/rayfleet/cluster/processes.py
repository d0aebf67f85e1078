"""Find and stop the processes of one rayfleet-started Ray cluster.

Every process rayfleet starts for a cluster carries ``RAYFLEET_CLUSTER_ID`` in its
environment, and Ray passes its environment on to every process it spawns
(GCS, raylet, dashboard, workers, Serve replicas). We find a cluster's processes
by that marker, so stopping one cluster never touches another Ray on the machine
(``ray stop`` would kill every Ray process by name).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["MARKER_ENV", "cluster_pids", "is_running", "terminate"]

MARKER_ENV = "RAYFLEET_CLUSTER_ID"


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return needle in data.split(b"\0")


def is_running(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def cluster_pids(cluster_id: str) -> list[int]:
    """PIDs of the live (non-zombie) processes marked with this cluster id."""
    needle = f"{MARKER_ENV}={cluster_id}".encode()
    me = os.getpid()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid != me and _environ_has(pid, needle) and is_running(pid):
            pids.append(pid)
    return sorted(pids)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def terminate(cluster_id: str, *, grace_s: float = 5.0, timeout_s: float = 20.0) -> list[int]:
    """Stop every process of the cluster: SIGTERM, then SIGKILL after grace_s.

    Returns the PIDs still alive after timeout_s (empty on success). Idempotent.
    """
    pids = cluster_pids(cluster_id)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    killed = False
    start = time.monotonic()
    while time.monotonic() < deadline:
        left = cluster_pids(cluster_id)
        if not left:
            return []
        if not killed and time.monotonic() - start >= grace_s:
            _signal_all(left, signal.SIGKILL)
            killed = True
        elif killed:
            _signal_all(left, signal.SIGKILL)
        time.sleep(0.2)
    return cluster_pids(cluster_id)
