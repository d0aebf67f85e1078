"""Find and stop the processes of one rayfleet-started Ray cluster.

rayfleet runs ``ray start --head`` as the leader of a new session (setsid), and
every process Ray spawns from it (GCS, raylet, dashboard, agents, workers, Serve
replicas) stays in that session: Ray's workers change their process group but
not their session, and the session survives re-parenting when a parent dies
first. We find a cluster's processes by that session id, so stopping one
cluster never touches another Ray on the machine (``ray stop`` would kill every
Ray process by name).

The environment marker ``RAYFLEET_CLUSTER_ID`` is set too, but it is not enough
on its own: Ray's ``setproctitle`` overwrites ``/proc/PID/environ`` of its
workers and agents.

A session id is a PID, and PIDs are reused: a record from before a reboot, or
one whose cluster died long ago, may name a session that now belongs to someone
else. The record keeps the machine's boot id and the start time of the session's
leader (``ray start``); a session is taken for the cluster's only on the same boot
and when its leader is gone or is that same process.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MARKER_ENV", "cluster_pids", "is_running", "terminate", "boot_id", "start_time", "Session"]

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


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[3])  # state ppid pgrp session ...


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None if it doesn't run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])   # field 22, counted after "pid (comm)"


@dataclass(frozen=True)
class Session:
    """The session rayfleet started Ray in: its id (the leader's PID), the boot it was made in and the
    leader's start time ("" / 0: unknown, a record of an older rayfleet)."""

    id: int
    boot: str = ""
    leader_start: int = 0

    @classmethod
    def of(cls, pid: int) -> "Session":
        return cls(pid, boot_id(), start_time(pid) or 0)

    def is_ours(self) -> bool:
        """Not a session of someone else that reuses the id (after a reboot, or PIDs wrapped around)."""
        if self.boot and self.boot != boot_id():
            return False
        started = start_time(self.id)
        return not (self.leader_start and started is not None and started != self.leader_start)


def cluster_pids(cluster_id: str, session: Session | None = None) -> list[int]:
    """PIDs of the live (non-zombie) processes of this cluster.

    A process belongs to it when it is in the cluster's session (``session``: the
    ``ray start`` that rayfleet ran with setsid), if that session is still the
    cluster's, or carries the cluster's environment marker.
    """
    needle = f"{MARKER_ENV}={cluster_id}".encode()
    sid = session.id if session is not None and session.is_ours() else None
    me = os.getpid()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me or not is_running(pid):
            continue
        if (sid is not None and _session_of(pid) == sid) or _environ_has(pid, needle):
            pids.append(pid)
    return sorted(pids)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def terminate(cluster_id: str, session: Session | None = None, *, grace_s: float = 5.0,
              timeout_s: float = 20.0) -> list[int]:
    """Stop every process of the cluster: SIGTERM, then SIGKILL after grace_s.

    Returns the PIDs still alive after timeout_s (empty on success). Idempotent.
    """
    if session is not None and session.id <= 1:
        raise ValueError(f"refusing to stop session {session.id}")
    pids = cluster_pids(cluster_id, session)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    killed = False
    start = time.monotonic()
    while time.monotonic() < deadline:
        left = cluster_pids(cluster_id, session)
        if not left:
            return []
        if not killed and time.monotonic() - start >= grace_s:
            _signal_all(left, signal.SIGKILL)
            killed = True
        elif killed:
            _signal_all(left, signal.SIGKILL)
        time.sleep(0.2)
    return cluster_pids(cluster_id, session)
