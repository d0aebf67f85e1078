"""An SSH tunnel from this machine to a port on a fleet's head (``ssh -N -L``), over rayfleet's
checked SSH (the fleet's pinned host keys, ``ssh.py``): what ``rayfleet dashboard`` opens for a
browser, so the dashboard and its token travel inside SSH, not as plain HTTP on the LAN.
"""

from __future__ import annotations

import atexit
import ctypes
import signal
import socket
import subprocess
import tempfile
import threading
import time

from rayfleet.config.fleet import FleetSpec
from rayfleet.errors import ClusterError

__all__ = ["Tunnel", "dashboard_target", "shared"]


def dashboard_target(fleet: FleetSpec) -> tuple[str, int]:
    """Where the dashboard listens, as the head itself reaches it."""
    host = fleet.dashboard_bind
    return (fleet.head.address if host in ("0.0.0.0", "::") else host), fleet.ports.dashboard


_SHARED: dict[tuple, "Tunnel"] = {}
_LOCK = threading.Lock()


def shared(fleet: FleetSpec) -> "Tunnel":
    """This process's tunnel to the fleet's dashboard: opened at first use, closed when the process
    exits (and by the kernel if it dies: the ssh gets SIGTERM when its parent thread goes)."""
    key = (fleet.name, fleet.head.address, fleet.ports.dashboard)
    with _LOCK:
        t = _SHARED.get(key)
        if t is None or t.proc is None or t.proc.poll() is not None:
            t = Tunnel(fleet, *dashboard_target(fleet)).__enter__()
            _SHARED[key] = t
            if len(_SHARED) == 1:
                atexit.register(_close_all)
        return t


def _close_all() -> None:
    for t in list(_SHARED.values()):
        t.close()
    _SHARED.clear()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tunnel:
    """``with Tunnel(fleet, host, port) as t: t.url`` — 127.0.0.1:``t.local_port`` on this machine
    reaches ``host:port`` as the head sees it, until the block ends."""

    def __init__(self, fleet: FleetSpec, remote_host: str, remote_port: int, local_port: int = 0,
                 timeout_s: float = 20):
        from rayfleet.cluster.fleet import paths
        from rayfleet.cluster.preflight import runner_for

        self.fleet = fleet
        self.remote = (remote_host, remote_port)
        self.local_port = local_port or _free_port()
        self.timeout_s = timeout_s
        self._runner = runner_for(fleet, fleet.head, paths(fleet).known_hosts)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def __enter__(self) -> "Tunnel":
        args = self._runner.args()
        forward = f"127.0.0.1:{self.local_port}:{self.remote[0]}:{self.remote[1]}"
        self._err = tempfile.TemporaryFile("w+")   # not a pipe: nobody reads a long-lived tunnel's stderr
        self.proc = subprocess.Popen([*args[:-1], "-N", "-o", "ExitOnForwardFailure=yes", "-L", forward, args[-1]],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
                                     text=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._err.seek(0)
                err = self._err.read().strip().splitlines()
                raise ClusterError(f"The SSH tunnel to {self.fleet.head.label} did not open: "
                                   f"{err[-1] if err else f'ssh exited {self.proc.returncode}'}",
                                   hint="Run 'rayfleet check' (SSH to the head, its pinned host key).")
            try:
                with socket.create_connection(("127.0.0.1", self.local_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.close()
        raise ClusterError(f"The SSH tunnel to {self.fleet.head.label} did not open in {self.timeout_s:.0f} s.",
                           hint="Run 'rayfleet check' (SSH to the head).")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            self._err.close()

    def __exit__(self, *exc) -> None:
        self.close()
