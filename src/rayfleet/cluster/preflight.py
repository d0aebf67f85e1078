"""``rayfleet check``: everything that would break the cluster, found before ``ray up``.

Every host is checked in parallel, each step with a timeout, and every failure
is reported (not just the first). A host that can't be reached gets one ✗ for
SSH and '-' (not checked) elsewhere; it never hangs the check.

Checks, in the words the table uses:
  ssh        log in with the fleet's user and key
  python     the venv's Python runs and has the head's version
  ray        ``ray --version`` equals the head's
  rayfleet   rayfleet is installed in the venv, same version as the head's
  ports      every port the node needs is free, and reachable from the other nodes
  disk       free space in the temp dir
  gpus       nvidia-smi sees num_gpus GPUs (only where num_gpus > 0)
  storage    the storage path exists, is writable, and a file written on one node is seen on every node
  clock      clock skew vs the head < 1 s
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rayfleet.cluster.ssh import SSHError, SSHRunner
from rayfleet.config.fleet import FleetSpec, NodeSpec

__all__ = ["CheckResult", "Report", "CHECKS", "run_checks", "runner_for"]

CHECKS = ["ssh", "python", "ray", "rayfleet", "ports", "disk", "gpus", "storage", "clock"]
MIN_FREE_DISK_GIB = 2.0
MAX_SKEW_S = 1.0


@dataclass(frozen=True)
class CheckResult:
    host: str
    check: str
    ok: bool | None          # None: not checked (skipped)
    detail: str = ""
    fix: str = ""


@dataclass
class Report:
    hosts: list[str]
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.ok is not False for r in self.results)

    def get(self, host: str, check: str) -> CheckResult | None:
        for r in self.results:
            if r.host == host and r.check == check:
                return r
        return None

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.ok is False]


def runner_for(fleet: FleetSpec, node: NodeSpec, known_hosts: Path | None = None) -> SSHRunner:
    user, key, port = fleet.ssh_for(node)
    return SSHRunner(host=node.host, user=user, key=key, port=port, known_hosts=known_hosts)


def _ports_for(fleet: FleetSpec, node: NodeSpec) -> dict[str, int]:
    ports = fleet.ports.fixed()
    if node is not fleet.head:
        for head_only in ("gcs", "dashboard", "client_server"):
            ports.pop(head_only)
    return ports


_PROBE = r"""
import json, socket, sys, platform
out = {"python": platform.python_version()}
try:
    import rayfleet; out["rayfleet"] = rayfleet.__version__
except Exception as e:
    out["rayfleet_error"] = repr(e)
taken = []
for name, port in json.loads(sys.argv[1]).items():
    for addr in ("0.0.0.0", sys.argv[2]):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError:
            taken.append(f"{name} {port}"); s.close(); break
        s.close()
out["taken"] = taken
print(json.dumps(out))
"""

_LISTEN = r"""
import socket, sys, time, os
socks = []
for port in map(int, sys.argv[2].split(",")):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((sys.argv[1], port)); s.listen(16); socks.append(s)
    except OSError:
        pass
print("ready", flush=True)
# Hold the ports until rayfleet closes the session (stdin EOF), at most argv[3] seconds.
import threading
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
time.sleep(float(sys.argv[3]))
"""

_CONNECT = r"""
import json, socket, sys
bad = []
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        bad.append(f"{host}:{port} ({e.strerror or e})")
print(json.dumps(bad))
"""


class _HostCheck:
    """The checks of one host; each method returns CheckResults and never raises."""

    def __init__(self, fleet: FleetSpec, node: NodeSpec, runner: SSHRunner):
        self.fleet, self.node, self.r = fleet, node, runner
        self.py = f"{fleet.python}/bin/python"
        self.facts: dict = {}
        self.reachable = False

    def res(self, check: str, ok: bool | None, detail: str = "", fix: str = "") -> CheckResult:
        return CheckResult(self.node.host, check, ok, detail, fix)

    def login(self) -> CheckResult:
        try:
            r = self.r.run("true", timeout_s=15)
        except SSHError as e:
            return self.res("ssh", False, e.message.split(": ", 1)[-1],
                            f"check that sshd runs on {self.node.host} and accepts the key for {self.r.user}")
        self.reachable = r.ok
        return self.res("ssh", r.ok, "" if r.ok else r.stderr.strip()[-200:])

    def probe(self) -> list[CheckResult]:
        ports = _ports_for(self.fleet, self.node)
        cmd = (f"{shlex.quote(self.py)} -c {shlex.quote(_PROBE)} {shlex.quote(json.dumps(ports))} "
               f"{shlex.quote(self.node.host)}; echo; {shlex.quote(self.fleet.python)}/bin/ray --version")
        try:
            r = self.r.run(cmd, timeout_s=60)
        except SSHError as e:
            return [self.res(c, False, e.message) for c in ("python", "ray", "rayfleet", "ports")]
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        probe = next((json.loads(ln) for ln in lines if ln.startswith("{")), None)
        ray_line = next((ln for ln in lines if ln.startswith("ray, version")), None)
        out = []
        if probe is None:
            fix = f"create the venv at {self.fleet.python} on {self.node.host} (python -m venv) and install rayfleet"
            return [self.res("python", False, f"{self.py} does not run", fix),
                    self.res("ray", None), self.res("rayfleet", None), self.res("ports", None)]
        self.facts = {"python": probe["python"], "rayfleet": probe.get("rayfleet"),
                      "ray": ray_line.split()[2] if ray_line else None, "taken": probe["taken"]}
        out.append(self.res("python", True, probe["python"]))
        out.append(self.res("ray", self.facts["ray"] is not None, self.facts["ray"] or "ray is not installed",
                            "" if self.facts["ray"] else f"pip install 'ray[default]' into {self.fleet.python}"))
        out.append(self.res("rayfleet", self.facts["rayfleet"] is not None,
                            self.facts["rayfleet"] or "rayfleet is not installed",
                            "" if self.facts["rayfleet"] else f"pip install rayfleet into {self.fleet.python}"))
        taken = probe["taken"]
        out.append(self.res("ports", not taken, ("taken: " + ", ".join(taken)) if taken else "free",
                            "stop what uses them (a Ray already running? 'rayfleet down'), or change 'ports:'"
                            if taken else ""))
        return out

    def disk(self) -> CheckResult:
        t = shlex.quote(self.fleet.temp_dir)
        cmd = f"d={t}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; df -Pk \"$d\" | tail -1"
        try:
            r = self.r.run(cmd, timeout_s=20)
            free_gib = int(r.stdout.split()[3]) / 2**20
        except (SSHError, IndexError, ValueError) as e:
            return self.res("disk", False, f"could not read free space: {e}")
        ok = free_gib >= MIN_FREE_DISK_GIB
        return self.res("disk", ok, f"{free_gib:.1f} GiB free in {self.fleet.temp_dir}",
                        "" if ok else f"free at least {MIN_FREE_DISK_GIB} GiB, or set temp_dir elsewhere")

    def gpus(self) -> CheckResult:
        want = self.fleet.resources_for(self.node).num_gpus or 0
        if want == 0:
            return self.res("gpus", None, "none asked")
        try:
            r = self.r.run("nvidia-smi -L", timeout_s=30)
        except SSHError as e:
            return self.res("gpus", False, e.message)
        have = sum(1 for ln in r.stdout.splitlines() if ln.startswith("GPU "))
        ok = r.ok and have >= want
        return self.res("gpus", ok, f"{have} GPU(s) visible, {want} asked",
                        "" if ok else "install the NVIDIA driver, or lower num_gpus")

    def clock(self, head_offset: float | None) -> tuple[CheckResult, float | None]:
        try:
            t0 = time.time()
            r = self.r.run("date +%s.%N", timeout_s=15)
            t1 = time.time()
            offset = float(r.stdout.strip()) - (t0 + t1) / 2
        except (SSHError, ValueError) as e:
            return self.res("clock", False, f"could not read the clock: {e}"), None
        return self.res("clock", None), offset


def _storage(fleet: FleetSpec, checks: list[_HostCheck]) -> list[CheckResult]:
    live = [c for c in checks if c.reachable]
    if fleet.storage is None:
        return [c.res("storage", None, "no storage configured") for c in checks]
    path = fleet.storage.path
    nonce = uuid.uuid4().hex[:8]
    name = lambda c: f".rayfleet-check-{nonce}-{c.node.host}"  # noqa: E731
    wrote: dict[str, str] = {}

    def write(c: _HostCheck) -> None:
        q = shlex.quote(path)
        try:
            r = c.r.run(f"test -d {q} || {{ echo 'does not exist'; exit 3; }}; "
                        f"echo {nonce} > {q}/{name(c)} || {{ echo 'not writable'; exit 4; }}", timeout_s=20)
            wrote[c.node.host] = "" if r.ok else (r.stdout.strip() or r.stderr.strip())
        except SSHError as e:
            wrote[c.node.host] = e.message

    with ThreadPoolExecutor(max(1, len(live))) as pool:
        list(pool.map(write, live))
    results = []
    writers = [c for c in live if wrote.get(c.node.host) == ""]

    def read(c: _HostCheck) -> CheckResult:
        if wrote.get(c.node.host):
            return c.res("storage", False, f"{path} {wrote[c.node.host]}",
                         f"mount the shared storage at {path} on {c.node.host} (writable by {c.r.user})")
        try:
            r = c.r.run(f"ls -a {shlex.quote(path)}", timeout_s=20)
        except SSHError as e:
            return c.res("storage", False, e.message)
        seen = set(r.stdout.split())
        missing = [w.node.host for w in writers if name(w) not in seen]
        if missing:
            return c.res("storage", False, f"{path} is not shared: files written on {', '.join(missing)} are not seen here",
                         f"mount the same shared directory (NFS or similar) at {path} on every node")
        return c.res("storage", True, f"{path} shared")

    with ThreadPoolExecutor(max(1, len(live))) as pool:
        results = list(pool.map(read, live))

    def clean(c: _HostCheck) -> None:
        try:
            c.r.run(f"rm -f {shlex.quote(path)}/{name(c)}", timeout_s=20)
        except SSHError:
            pass

    with ThreadPoolExecutor(max(1, len(writers))) as pool:
        list(pool.map(clean, writers))
    return results


def _reachability(fleet: FleetSpec, checks: list[_HostCheck], hold_s: float = 20) -> dict[str, list[str]]:
    """Listen on each node's free ports, connect from every other node; host -> unreachable targets."""
    live = [c for c in checks if c.reachable and c.facts]
    if len(live) < 2:
        return {}
    listening: dict[str, list[int]] = {}
    procs = []
    import subprocess

    starting = []
    for c in live:  # start every listener first, then wait for them together
        taken = {int(t.split()[1]) for t in c.facts.get("taken", [])}
        ports = [p for p in _ports_for(fleet, c.node).values() if p not in taken]
        if not ports:
            continue
        cmd = (f"{shlex.quote(c.py)} -c {shlex.quote(_LISTEN)} {shlex.quote(c.node.host)} "
               f"{','.join(map(str, ports))} {hold_s}")
        p = subprocess.Popen(c.r.args() + ["bash -c " + shlex.quote(cmd)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, stdin=subprocess.PIPE, text=True)
        procs.append(p)
        starting.append((c, ports, p))
    for c, ports, p in starting:
        if p.stdout is not None and p.stdout.readline().strip() == "ready":
            listening[c.node.host] = ports
    bad: dict[str, list[str]] = {}
    try:
        def probe(c: _HostCheck) -> None:
            targets = [(h, port) for h, ports in listening.items() if h != c.node.host for port in ports]
            if not targets:
                return
            try:
                r = c.r.run(f"{shlex.quote(c.py)} -c {shlex.quote(_CONNECT)} {shlex.quote(json.dumps(targets))}",
                            timeout_s=60)
                failed = json.loads(r.stdout.strip().splitlines()[-1]) if r.ok else [r.stderr.strip()]
            except (SSHError, ValueError, IndexError) as e:
                failed = [str(e)]
            for f in failed:
                target_host = f.split(":")[0]
                bad.setdefault(target_host, []).append(f"{f} from {c.node.host}")

        with ThreadPoolExecutor(len(live)) as pool:
            list(pool.map(probe, live))
    finally:
        for p in procs:  # closing stdin ends the remote listener, then the ssh session
            if p.stdin:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return bad


def run_checks(fleet: FleetSpec, known_hosts: Path | None = None) -> Report:
    """Run every check on every host, in parallel. Never raises for a host problem."""
    checks = [_HostCheck(fleet, n, runner_for(fleet, n, known_hosts)) for n in fleet.nodes]
    results: dict[tuple[str, str], CheckResult] = {}

    def per_host(c: _HostCheck) -> list[CheckResult]:
        login = c.login()
        if not login.ok:
            return [login] + [c.res(k, None, "host not reachable") for k in CHECKS if k not in ("ssh",)]
        return [login, *c.probe(), c.disk(), c.gpus()]

    with ThreadPoolExecutor(len(checks)) as pool:
        for rows in pool.map(per_host, checks):
            for row in rows:
                results[(row.host, row.check)] = row

    head = checks[0]
    # Versions must equal the head's.
    for c in checks[1:]:
        for key in ("python", "ray", "rayfleet"):
            mine, theirs = c.facts.get(key), head.facts.get(key)
            cur = results.get((c.node.host, key))
            if cur and cur.ok and theirs and mine != theirs:
                results[(c.node.host, key)] = c.res(
                    key, False, f"{mine} here, {theirs} on the head",
                    f"install {key} {theirs} in {fleet.python} on {c.node.host} (same version everywhere)")

    # Ports reachable from the other nodes.
    for host, failed in _reachability(fleet, checks).items():
        cur = results.get((host, "ports"))
        if cur and cur.ok:
            results[(host, "ports")] = CheckResult(host, "ports", False, "unreachable: " + "; ".join(failed[:4]),
                                                   "open these ports in the firewall between the nodes")

    for r in _storage(fleet, checks):
        results[(r.host, "storage")] = r

    # Clocks vs the head.
    live = [c for c in checks if c.reachable]
    with ThreadPoolExecutor(max(1, len(live))) as pool:
        offsets = dict(zip([c.node.host for c in live], pool.map(lambda c: c.clock(None), live)))
    head_offset = offsets.get(head.node.host, (None, None))[1]
    for c in live:
        row, off = offsets[c.node.host]
        if off is None or head_offset is None:
            results[(c.node.host, "clock")] = row if off is None else c.res("clock", None, "head not reachable")
            continue
        skew = abs(off - head_offset)
        ok = skew < MAX_SKEW_S
        results[(c.node.host, "clock")] = c.res("clock", ok, f"skew {skew:.2f} s vs the head",
                                                "" if ok else "run NTP (chrony or systemd-timesyncd) on every node")
    hosts = [c.node.host for c in checks]
    ordered = [results[(h, k)] for h in hosts for k in CHECKS if (h, k) in results]
    return Report(hosts=hosts, results=ordered)
