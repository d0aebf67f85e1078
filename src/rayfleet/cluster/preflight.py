"""``rayfleet check``: everything that would break the cluster, found before ``ray up``.

Every host is checked in parallel, each step with a timeout, and every failure
is reported (not just the first). A host that can't be reached gets one ✗ for
SSH and '-' (not checked) elsewhere; it never hangs the check.

Checks, in the words the table uses:
  ssh        log in with the fleet's user and key
  python     the venv's Python runs and has the head's version; for the runtime rayfleet ships
             (no ``python:``), the node's ``python3`` is this machine's minor version and machine type
  runtime    the shipped runtime: installed, to install, or a different one there (``up`` installs)
  ray        ``ray --version`` equals the head's (read from the package metadata it prints
             when bin/ray is pip's launcher for the venv's Python, else run)
  rayfleet   rayfleet is installed in the venv, same version as the head's
  names      every host name of fleet.yaml resolves on the node to the address it has here
  ports      every port the node needs is free, and reachable from the other nodes
  disk       free space in the temp dir
  gpus       nvidia-smi sees num_gpus GPUs (only where num_gpus > 0)
  storage    the storage path exists, is writable, and a file written on one node is seen on every node
  recovery   the head only, with head_recovery: its RocksDB directory writable and on a local filesystem
  clock      clock skew vs the head < 1 s

How (one SSH session per host, two rounds): rayfleet logs in to every host at
once and runs one probe script there (the venv's Python). Round 1, on its own:
Python and rayfleet versions, free disk, Ray's version (``bin/ray --version``, or see
below) and ``nvidia-smi -L`` started in the background, every port bound (free?) and then held
listening on the node's address, the storage test file written. When every
host has answered, round 2 (one line sent down each session): the clock is
read (the line's round trip is milliseconds, not an SSH login), every other
node's held ports are connected to, the storage directory is listed for the
other nodes' files, and the version outputs are collected. Closing the session
frees the ports and removes the test file. A host whose venv Python does not
run gets the same checks from plain shell commands instead.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rayfleet.cluster.check_compare import Round2, compare_clocks, compare_ports, compare_storage, compare_versions
from rayfleet.cluster.check_rows import CheckResult, HostRows
from rayfleet.cluster import redis_store
from rayfleet.cluster.launcher import gcs_store
from rayfleet.cluster.probe_session import PROBE, ProbeSession
from rayfleet.cluster.runtime import MARK, local_lock
from rayfleet.cluster.ssh import KEY_CHANGED, SSHError, SSHRunner, host_key_fingerprints, known_name
from rayfleet.config.fleet import FleetSpec, NodeSpec
from rayfleet.errors import HostNotResolved

__all__ = ["CheckResult", "Report", "CHECKS", "run_checks", "runner_for"]

CHECKS = ["ssh", "python", "runtime", "ray", "rayfleet", "names", "ports", "disk", "gpus", "storage", "recovery",
          "clock"]

LOGIN_TIMEOUT_S = 15      # SSH login (the original per-command budget of the login check)
PROBE_TIMEOUT_S = 60      # round 1 after login
ROUND2_TIMEOUT_S = 90     # round 2: connects (3 s each, in parallel), ray --version (60 s at most)
HOLD_S = 300              # the probe exits by itself after this, whatever happens to rayfleet
_LOGIN_MARK = "rayfleet-check-login"
# `bin/ray --version` costs ~3 s of CPU per host (it imports Ray's whole CLI) and was most
# of the check's time. When bin/ray is pip's launcher for the venv's own Python, what it
# prints is known without running it: click's version_option prints the version of the
# 'ray' distribution that Python sees. Any other bin/ray (a wrapper, another Python) is run
# (probe.py's ray_version).


@dataclass
class Report:
    hosts: list[str]                 # as fleet.yaml writes them
    results: list[CheckResult]
    labels: dict[str, str] = field(default_factory=dict)   # host -> "name (address)" for names

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


def _names(fleet: FleetSpec) -> dict[str, str]:
    """The hosts fleet.yaml writes as names, with the address each resolves to here (unresolved ones left
    out: they are ✗ ssh rows of their own)."""
    out = {}
    for n in fleet.nodes:
        try:
            if n.address != n.host:
                out[n.host] = n.address
        except HostNotResolved:
            continue
    return out


def _ports_for(fleet: FleetSpec, node: NodeSpec) -> dict[str, int]:
    ports = fleet.ports.fixed()
    if node is not fleet.head:
        for head_only in ("gcs", "dashboard", "client_server", "dashboard_metrics", "autoscaler_metrics"):
            ports.pop(head_only)
    return ports


class _HostCheck(HostRows):
    """The checks of one host; never raises. ``rows`` holds its results by check name."""

    def __init__(self, fleet: FleetSpec, node: NodeSpec, runner: SSHRunner, nonce: str, *, running: bool = False):
        self.fleet, self.node, self.r = fleet, node, runner
        self.running = running   # the fleet's Ray runs here (an `up` of a running fleet): it holds the ports
        # The probe needs only the standard library: the node's python3 runs it when rayfleet ships
        # the runtime (which may not be there yet), else the venv's own Python.
        self.lock = local_lock(tuple(fleet.runtime.extra_requirements)) if fleet.shipped else None
        self.py = "python3" if fleet.shipped else f"{fleet.venv}/bin/python"
        self.py_sh = "python3" if fleet.shipped else f"{fleet.venv_sh}/bin/python"
        self.facts: dict = {}
        self.reachable = False
        self.python_runs = False
        self.listening: list[int] = []
        self.mark = f".rayfleet-check-{nonce}-{node.host}"
        try:
            self.address: str | None = node.address
            self.unresolved: HostNotResolved | None = None
        except HostNotResolved as e:  # a ✗ row of its own, not an error that stops the check
            self.address, self.unresolved = None, e
        self.nonce = nonce
        self.names = _names(fleet)
        self.wrote: str | None = None           # "" written, else why not; None: no storage / not tried
        self.offset: float | None = None        # remote clock - local clock
        self.clock_error = ""
        self.rows: dict[str, CheckResult] = {}
        self.session: ProbeSession | None = None
        self.gpus_wanted = self.fleet.resources_for(self.node).num_gpus or 0

    def res(self, check: str, ok: bool | None, detail: str = "", fix: str = "") -> CheckResult:
        return CheckResult(self.node.host, check, ok, detail, fix)

    def put(self, row: CheckResult) -> None:
        self.rows[row.check] = row

    def _key_changed(self) -> CheckResult:
        known, now = host_key_fingerprints(self.r.host, self.r.port, self.r.known_hosts)
        if not known:
            return self.res("ssh", False, f"its host key is not pinned yet; it offers {', '.join(now) or '?'}",
                            "compare with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it), "
                            "then run 'rayfleet check' on a terminal and answer yes, or with --accept-new-hosts")
        return self.res("ssh", False,
                        f"its host key changed: known {', '.join(known) or '?'}; it offers {', '.join(now) or '?'}",
                        f"nothing was sent to it. If {self.node.host} was reinstalled, forget the old key: "
                        f"ssh-keygen -R {known_name(self.r.host, self.r.port)} "
                        f"-f {self.r.known_hosts}; otherwise someone may be between you and it")

    # -- round 1 -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.unresolved is not None:
            self.put(self.res("ssh", False, f"the name does not resolve on this machine ({self.unresolved.reason})",
                              HostNotResolved.FIX))
            return
        cfg = {"ip": self.address, "ports": {} if self.running else _ports_for(self.fleet, self.node),
               "temp_dir": self.fleet.temp_dir,
               "ray": None if self.lock else f"{self.fleet.venv}/bin/ray", "gpus": self.gpus_wanted,
               "hold_s": HOLD_S, "nonce": self.nonce, "mark": self.mark,
               "storage": self.fleet.storage.path if self.fleet.storage else None,
               "gcs_store": gcs_store(self.fleet) if self.node is self.fleet.head
               and self.fleet.head_recovery.store == "rocksdb" else None,
               "redis_server": self.node is redis_store.node(self.fleet),
               "redis_url": self.fleet.head_recovery.redis.url if self.node is self.fleet.head
               and self.fleet.head_recovery.store == "redis" else None,
               "prometheus": self.fleet.monitoring.prometheus_path if self.node is self.fleet.head
               and self.fleet.monitoring.enabled else None,
               "runtime": {"root": self.fleet.runtime.path, "digest": self.lock.digest, "mark": MARK}
               if self.lock else None,
               "names": sorted(self.names)}
        cmd = (f"echo {_LOGIN_MARK}; exec {self.py_sh} -c {shlex.quote(PROBE)} "
               f"{shlex.quote(json.dumps(cfg))}")
        try:
            self.session = ProbeSession(self.r, cmd)
        except OSError as e:
            self.put(self.res("ssh", False, f"can't run ssh: {e}", "install the OpenSSH client"))

    def round1(self, t0: float) -> None:
        s = self.session
        if s is None:
            return
        got = s.read(t0 + LOGIN_TIMEOUT_S)
        while got is not None and got[1] is not None and got[1] != _LOGIN_MARK:  # a chatty shell rc file
            got = s.read(t0 + LOGIN_TIMEOUT_S)
        if got is None or got[1] != _LOGIN_MARK:
            if got is None:
                s.proc.kill()
                detail = f"no login after {LOGIN_TIMEOUT_S} s"
            else:
                rc = s.exit_code()
                err = s.err_text()
                detail = (err.splitlines()[-1] if err else "connection failed") if rc == 255 else err[-200:]
            s.close()
            self.session = None
            if detail == KEY_CHANGED and self.r.known_hosts is not None:
                self.put(self._key_changed())
                return
            self.put(self.res("ssh", False, detail,
                              f"check that sshd runs on {self.node.host} and accepts the key for {self.r.user}"))
            return
        self.reachable = True
        self.put(self.res("ssh", True))
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        probe = None
        while probe is None:
            got = s.read(deadline)
            if got is None or got[1] is None:
                break
            if got[1].startswith("{"):
                try:
                    probe = json.loads(got[1])
                except ValueError:
                    pass
        if probe is None:
            s.close()
            self.session = None
            if got is None:  # it runs but never answered: don't guess what works
                for c in ("python", "runtime", "ray", "rayfleet", "names", "ports", "disk", "gpus"):
                    self.put(self.res(c, False, f"the check's probe did not answer in {PROBE_TIMEOUT_S} s"))
                return
            self._without_python()
            return
        self.python_runs = True
        self.facts = {"python": probe["python"], "rayfleet": probe.get("rayfleet"), "taken": probe["taken"]}
        self.listening = probe["listening"]
        if self.lock:
            self._shipped_rows(probe)
        else:
            self.put(self.res("python", True, probe["python"]))
            self.put(self.res("runtime", None, f"python: {self.fleet.python} (your venv, as it is)"))
            self.put(self.res("rayfleet", self.facts["rayfleet"] is not None,
                              self.facts["rayfleet"] or "rayfleet is not installed",
                              "" if self.facts["rayfleet"] else f"pip install rayfleet into {self.fleet.python}"))
        self._names_row(probe.get("names") or {})
        taken = probe["taken"]
        if self.running:
            self.put(self.res("ports", None, "held by the fleet's Ray, running here"))
        else:
            self.put(self.res("ports", not taken, ("taken: " + ", ".join(taken)) if taken else "free",
                              "stop what uses them (a Ray already running? 'rayfleet down'), or change 'ports:'"
                              if taken else ""))
        self.put(self._disk_row(probe["disk_free_kib"] / 2**20))
        if "storage" in probe:
            self.wrote = probe["storage"]
        if "gcs_store" in probe:
            self.put(self._recovery_row(probe["gcs_store"]))
        if "redis" in probe:
            self.put(self._redis_row(probe["redis"]))
        if "prometheus" in probe:
            self.put(self._monitoring_row(probe["prometheus"]))

    def _without_python(self) -> None:
        """The venv's Python does not run here: report it, and check what needs no Python by shell."""
        if self.lock:
            fix = f"install Python {self.lock.python} (python3) on {self.node.host}"
        else:
            fix = f"create the venv at {self.fleet.python} on {self.node.host} (python -m venv) and install rayfleet"
        self.put(self.res("python", False, f"{self.py} does not run", fix))
        for c in ("runtime", "ray", "rayfleet", "names", "ports"):
            self.put(self.res(c, None))
        t = shlex.quote(self.fleet.temp_dir)
        try:
            r = self.r.run(f"d={t}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; df -Pk \"$d\" | tail -1",
                           timeout_s=20)
            self.put(self._disk_row(int(r.stdout.split()[3]) / 2**20))
        except (SSHError, IndexError, ValueError) as e:
            self.put(self.res("disk", False, f"could not read free space: {e}"))
        if self.gpus_wanted:
            try:
                r = self.r.run("nvidia-smi -L", timeout_s=30)
                self.put(self._gpus_row(r.rc, r.stdout))
            except SSHError as e:
                self.put(self.res("gpus", False, e.message))
        if self.fleet.storage is not None:
            q = shlex.quote(self.fleet.storage.path)
            try:
                r = self.r.run(f"test -d {q} || {{ echo 'does not exist'; exit 3; }}; "
                               f"echo {self.nonce} > {q}/{self.mark} || {{ echo 'not writable'; exit 4; }}",
                               timeout_s=20)
                self.wrote = "" if r.ok else (r.stdout.strip() or r.stderr.strip())
            except SSHError as e:
                self.wrote = e.message

    # -- round 2 -------------------------------------------------------------------------------

    def round2(self, targets: list[tuple[str, int]], marks: list[str]) -> tuple[list[str], list[str] | None]:
        """Clock, connects to the other nodes, storage listing, ray/gpus outputs.

        Returns (unreachable targets, storage marks seen or None when not listed)."""
        if self.session is None:
            return self._round2_shell(marks)
        s = self.session
        t0 = time.time()
        if not s.send({"targets": targets, "marks": marks}):
            self._round2_lost("the session ended")
            return [], None
        got = s.read(time.monotonic() + LOGIN_TIMEOUT_S)
        if got is None or got[1] is None:
            self._round2_lost("no answer")
            return [], None
        try:
            self.offset = float(json.loads(got[1])["clock"]) - (t0 + got[0]) / 2
        except (ValueError, KeyError) as e:
            self.clock_error = f"could not read the clock: {e}"
        got = s.read(time.monotonic() + ROUND2_TIMEOUT_S)
        if got is None or got[1] is None:
            self._round2_lost(f"no answer in {ROUND2_TIMEOUT_S} s")
            return [], None
        res = json.loads(got[1])
        if self.lock is None:
            self._ray_row(res)
        if self.gpus_wanted:
            g = res.get("gpus") or {"rc": 127, "out": ""}
            self.put(self._gpus_row(g["rc"], g["out"]))
        if "storage_error" in res:
            self.wrote = res["storage_error"]
        return res.get("unreachable", []), res.get("seen")

    def _ray_row(self, res: dict) -> None:
        ray = res.get("ray") or {"rc": 127, "out": ""}
        ray_line = next((ln for ln in ray["out"].splitlines() if ln.startswith("ray, version")), None)
        self.facts["ray"] = ray_line.split()[2] if ray_line and ray["rc"] == 0 else None
        self.put(self.res("ray", self.facts["ray"] is not None, self.facts["ray"] or "ray is not installed",
                          "" if self.facts["ray"] else f"pip install 'ray[default]' into {self.fleet.python}"))

    def _round2_lost(self, why: str) -> None:
        for c in ("ray", "ports", "storage", "clock"):
            if c not in self.rows or self.rows[c].ok is not False:
                self.put(self.res(c, False, f"the check's session to this host was lost ({why})"))
        if self.gpus_wanted and "gpus" not in self.rows:
            self.put(self.res("gpus", False, f"the check's session to this host was lost ({why})"))

    def _round2_shell(self, marks: list[str]) -> tuple[list[str], list[str] | None]:
        """Round 2 for a host without a working venv Python: clock and storage by shell."""
        try:
            t0 = time.time()
            r = self.r.run("date +%s.%N", timeout_s=15)
            t1 = time.time()
            self.offset = float(r.stdout.strip()) - (t0 + t1) / 2
        except (SSHError, ValueError) as e:
            self.clock_error = f"could not read the clock: {e}"
        seen = None
        if self.wrote == "":
            try:
                r = self.r.run(f"ls -a {shlex.quote(self.fleet.storage.path)}", timeout_s=20)  # type: ignore[union-attr]
                names = set(r.stdout.split())
                seen = [m for m in marks if m in names]
            except SSHError as e:
                self.wrote = e.message
        return [], seen

    def finish(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        elif self.wrote == "" and self.fleet.storage is not None:
            try:
                self.r.run(f"rm -f {shlex.quote(self.fleet.storage.path)}/{self.mark}", timeout_s=20)
            except SSHError:
                pass


def run_checks(fleet: FleetSpec, known_hosts: Path | None = None, running: frozenset[str] = frozenset()) -> Report:
    """Run every check on every host, in parallel. Never raises for a host problem. ``running``: the
    addresses of the nodes where the fleet's Ray runs (their ports are not checked: it holds them)."""
    nonce = uuid.uuid4().hex[:8]
    checks = [_HostCheck(fleet, n, runner_for(fleet, n, known_hosts), nonce, running=n.address in running)
              for n in fleet.nodes]
    try:
        return _run(fleet, checks)
    finally:
        for c in checks:  # whatever happened: no probe, port or test file is left behind
            if c.session is not None:
                c.session.close()




def _run(fleet: FleetSpec, checks: list[_HostCheck]) -> Report:
    """Both rounds on every host at once, then the checks that compare hosts with each other."""
    live, out = _rounds(checks)
    compare_versions(fleet, checks)
    compare_ports(checks, live, out)
    compare_storage(fleet, live, out)
    compare_clocks(checks[0], live)
    return _report(checks)


def _rounds(checks: list[_HostCheck]) -> tuple[list[_HostCheck], Round2]:
    """Round 1 (logins, facts, ports held) on every host; round 2 (connects to the others' ports,
    their storage files) on the reachable ones. The probes end either way."""
    t0 = time.monotonic()
    for c in checks:  # every login at once
        c.start()
    with ThreadPoolExecutor(len(checks)) as pool:
        list(pool.map(lambda c: c.round1(t0), checks))

    live = [c for c in checks if c.reachable]
    listening = {c.address: c.listening for c in live if c.listening}
    marks = [c.mark for c in live if c.wrote == ""]
    out: Round2 = {}

    def round2(c: _HostCheck) -> None:
        targets = [(a, p) for a, ports in listening.items() if a != c.address for p in ports]
        out[c.node.host] = c.round2(targets if c.python_runs else [], marks)

    try:
        with ThreadPoolExecutor(max(1, len(live))) as pool:
            list(pool.map(round2, live))
    finally:
        with ThreadPoolExecutor(len(checks)) as pool:
            list(pool.map(lambda c: c.finish(), checks))
    return live, out


def _report(checks: list[_HostCheck]) -> Report:
    results: list[CheckResult] = []
    for c in checks:
        if not c.reachable:
            login = c.rows.get("ssh") or c.res("ssh", False, "not reached")
            results += [login] + [c.res(k, None, "host not reachable") for k in CHECKS if k != "ssh"]
            continue
        if not c.gpus_wanted and "gpus" not in c.rows:
            c.put(c.res("gpus", None, "none asked"))
        results += [c.rows[k] for k in CHECKS if k in c.rows]
    return Report(hosts=[c.node.host for c in checks], results=results,
                  labels={c.node.host: c.node.label for c in checks if c.address})
