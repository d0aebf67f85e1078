"""``rayfleet check``, second half: the checks that compare hosts with each other, once every host
has answered both rounds (preflight.py): versions against the head's, every held port reachable from
the other nodes, the storage seen alike, clocks against the head's. Each turns a host's row into a ✗
with the fix; none raises."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayfleet.config.fleet import FleetSpec

if TYPE_CHECKING:
    from rayfleet.cluster.preflight import _HostCheck

__all__ = ["Round2", "compare_versions", "compare_ports", "compare_storage", "compare_clocks", "MAX_SKEW_S"]

Round2 = dict[str, tuple[list[str], "list[str] | None"]]   # host -> (failed connects, storage marks seen)
MAX_SKEW_S = 1.0


def compare_versions(fleet: FleetSpec, checks: list["_HostCheck"]) -> None:
    """Python, Ray and rayfleet must equal the head's (a venv of the user's own; the shipped runtime
    is the same everywhere by construction, and its python3 is compared with this machine's)."""
    if fleet.shipped:
        return
    head = checks[0]
    for c in checks[1:]:
        for key in ("python", "ray", "rayfleet"):
            mine, theirs = c.facts.get(key), head.facts.get(key)
            cur = c.rows.get(key)
            if cur and cur.ok and theirs and mine != theirs:
                c.put(c.res(key, False, f"{mine} here, {theirs} on the head",
                            f"install {key} {theirs} in {fleet.python} on {c.node.host} (same version everywhere)"))


def compare_ports(checks: list["_HostCheck"], live: list["_HostCheck"], out: Round2) -> None:
    """Every port a node holds must be reachable from the other nodes."""
    by_address = {c.address: c for c in checks if c.address}
    bad: dict[str, list[str]] = {}
    for c in live:
        for f in out.get(c.node.host, ([], None))[0]:
            bad.setdefault(f.split(":")[0], []).append(f"{f} from {c.node.host}")
    for address, failed in bad.items():
        c = by_address.get(address)
        cur = c.rows.get("ports") if c else None
        if c and cur and cur.ok:
            c.put(c.res("ports", False, "unreachable: " + "; ".join(failed[:4]),
                        "open these ports in the firewall between the nodes"))


def compare_storage(fleet: FleetSpec, live: list["_HostCheck"], out: Round2) -> None:
    """Storage exists, is writable, and every node sees every other node's file."""
    path = fleet.storage.path if fleet.storage else ""
    writers = [c for c in live if c.wrote == ""]
    for c in live:
        if fleet.storage is None:
            c.put(c.res("storage", None, "no storage configured"))
        elif c.rows.get("storage") is not None:
            continue  # the session was lost: already reported
        elif c.wrote:
            c.put(c.res("storage", False, f"{path} {c.wrote}",
                        f"mount the shared storage at {path} on {c.node.host} (writable by {c.r.user})"))
        else:
            seen = set(out.get(c.node.host, ([], []))[1] or [])
            missing = [w.node.host for w in writers if w.mark not in seen]
            if missing:
                c.put(c.res("storage", False,
                            f"{path} is not shared: files written on {', '.join(missing)} are not seen here",
                            f"mount the same shared directory (NFS or similar) at {path} on every node"))
            else:
                c.put(c.res("storage", True, f"{path} shared"))


def compare_clocks(head: "_HostCheck", live: list["_HostCheck"]) -> None:
    for c in live:
        if c.rows.get("clock") is not None:
            continue
        if c.offset is None:
            c.put(c.res("clock", False, c.clock_error or "could not read the clock"))
        elif head.offset is None:
            c.put(c.res("clock", None, "head not reachable"))
        else:
            skew = abs(c.offset - head.offset)
            ok = skew < MAX_SKEW_S
            c.put(c.res("clock", ok, f"skew {skew:.2f} s vs the head",
                        "" if ok else "run NTP (chrony or systemd-timesyncd) on every node"))
