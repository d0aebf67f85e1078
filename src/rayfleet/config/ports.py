"""A cluster's ports: Ray's defaults and the rules every port plan must keep, one owner for the
local cluster (``cluster/state.py`` ``LocalPorts``, set by ``rayfleet up --local`` flags) and for
fleets (``config/fleet.py`` ``PortsSpec``, fleet.yaml's ``ports:``)."""

from __future__ import annotations

from typing import Callable

from rayfleet.cluster.serving import MIN_REPLICA_PORTS

__all__ = ["DEFAULTS", "RANGES", "port_problem"]

# Ray's defaults, except Serve's HTTP port; the replica range is rayfleet's (cluster/serving.py).
DEFAULTS = {
    "gcs": 6379,
    "dashboard": 8265,
    "serve": 8000,
    "client_server": 10001,
    "dashboard_agent": 52365,
    "min_worker": 10002,
    "max_worker": 19999,
    "min_replica": 30000,
    "max_replica": 31999,
}

RANGES = ("min_worker", "max_worker", "min_replica", "max_replica")


def port_problem(ports: dict[str, int], name: Callable[[str], str]) -> tuple[str, str | None] | None:
    """The first rule ``ports`` (field → port, the four ``RANGES`` included) breaks, as (message, hint),
    or None. ``name(field)`` is how the user sets that field (a CLI flag, a fleet.yaml key)."""
    lo_w, hi_w, lo_r, hi_r = (ports[k] for k in RANGES)
    fixed = {k: v for k, v in ports.items() if k not in RANGES}
    seen: dict[int, str] = {}
    for field, port in fixed.items():
        if not 1 <= port <= 65535:
            return f"Got {port} for the {field} port; expected an integer 1-65535.", None
        if port in seen:
            return f"The {seen[port]} and {field} ports are both {port}; each needs its own port.", None
        seen[port] = field
        if lo_w <= port <= hi_w:
            return (f"The {field} port {port} lies inside the worker port range {lo_w}-{hi_w}.",
                    f"Pick another port, or move the range with {name('min_worker')}/{name('max_worker')}.")
        if lo_r <= port <= hi_r:
            return (f"The {field} port {port} lies inside the Serve replica port range {lo_r}-{hi_r}.",
                    f"Pick another port, or move the range with {name('min_replica')}/{name('max_replica')}.")
    if lo_w > hi_w:
        return (f"Worker port range {lo_w}-{hi_w} is empty; {name('min_worker')} must not exceed "
                f"{name('max_worker')}.", None)
    if hi_r - lo_r + 1 < MIN_REPLICA_PORTS:
        return (f"Serve replica port range {lo_r}-{hi_r} needs at least {MIN_REPLICA_PORTS} ports (HAProxy's "
                f"stats and metrics, Serve's fallback proxy HTTP and gRPC, replica HTTP, replica gRPC); widen "
                f"{name('min_replica')}/{name('max_replica')}.",
                None)
    if lo_r <= hi_w and lo_w <= hi_r:
        return (f"The Serve replica port range {lo_r}-{hi_r} overlaps the worker port range {lo_w}-{hi_w}.",
                f"Move one of them ({name('min_replica')}/{name('max_replica')}, "
                f"{name('min_worker')}/{name('max_worker')}).")
    return None
