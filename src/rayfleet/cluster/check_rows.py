"""The rows of ``rayfleet check`` that one host's probe answers make (preflight.py runs the probe and
the rounds): the head's recovery store, names, the shipped runtime's rows, disk, GPUs.

``HostRows`` is mixed into ``preflight._HostCheck``, which holds what these read: ``fleet``, ``node``,
``r`` (the host's SSH runner), ``lock`` (the shipped runtime's, or None), ``names``, ``facts``,
``gpus_wanted``, and ``res``/``put`` (make a row, keep a row).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckResult", "HostRows", "NETWORK_FS", "MIN_FREE_DISK_GIB"]

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "ceph", "glusterfs", "9p", "lustre")
MIN_FREE_DISK_GIB = 2.0


@dataclass(frozen=True)
class CheckResult:
    host: str
    check: str
    ok: bool | None          # None: not checked (skipped)
    detail: str = ""
    fix: str = ""


class HostRows:
    """Row builders of one host's check (see the module's docstring for what they read)."""

    def _recovery_row(self, st: dict) -> CheckResult:
        """Head recovery's store on the head: RocksDB wants a local, writable directory."""
        where = f"RocksDB store {st['path']} ({st['fstype']})"
        if not st["writable"]:
            return self.res("recovery", False, f"{where}: not writable by {self.r.user}",
                            f"make its directory writable by {self.r.user}, or set head_recovery.path")
        if st["fstype"] in NETWORK_FS:
            return self.res("recovery", False, f"{where}: a network filesystem",
                            "put it on the head's local disk (head_recovery.path): RocksDB must not be on "
                            "NFS or another network filesystem")
        return self.res("recovery", True, where)

    def _redis_row(self, st: dict) -> CheckResult:
        """Head recovery's Redis: redis-server installed where rayfleet runs it, or the fleet's own answering."""
        if "server" in st:
            if not st["server"]:
                return self.res("recovery", False, "head_recovery.store is redis and Redis runs here: no redis-server",
                                "install it ('apt install redis-server' on Debian/Ubuntu), or name another node in "
                                "head_recovery.redis.host")
            return self.res("recovery", True, f"runs the head's store: {st['server'].split(' sha=')[0]}")
        where = f"Redis at {st['url']}"
        if "error" in st:
            return self.res("recovery", False, f"{where}: the head can't reach it ({st['error']})",
                            "start it, or let the head reach it (firewall, address in head_recovery.redis.url)")
        answer = st["answer"]
        if answer == "+PONG":
            return self.res("recovery", None, f"{where} answers without a password",
                            "give it one (requirepass) and put it in head_recovery.redis.password_file")
        if answer.startswith("-NOAUTH") or answer == "TLS":
            return self.res("recovery", True, f"{where} answers (the password is tried by 'rayfleet up')")
        return self.res("recovery", False, f"{where} does not answer as Redis does ({answer[:60] or 'nothing'})",
                        "check head_recovery.redis.url: host and port of your Redis")

    def _monitoring_row(self, st: dict) -> CheckResult:
        """monitoring on: the head has the Prometheus binary rayfleet runs."""
        if not st["version"]:
            return self.res("monitoring", False, f"monitoring is on: no Prometheus ({st['want']}) here",
                            "install it ('apt install prometheus' on Debian/Ubuntu; rayfleet runs its own, so "
                            "disable the package's service or give rayfleet another monitoring.port), or set "
                            "monitoring.prometheus_path")
        return self.res("monitoring", True, st["version"].split(" (branch")[0])

    def _names_row(self, seen: dict) -> None:
        """The fleet's host names resolve here as on the machine running rayfleet (Ray is told those addresses)."""
        if not self.names:
            self.put(self.res("names", None, "fleet.yaml names no host by name"))
            return
        bad = [f"{n} is {seen.get(n) or 'not resolved'} here, {a} on this machine"
               for n, a in sorted(self.names.items()) if seen.get(n) != a]
        self.put(self.res("names", not bad, "; ".join(bad) or f"{len(self.names)} name(s) resolve alike",
                          f"make these names resolve to the same addresses on {self.node.host} (DNS or "
                          "/etc/hosts), or write the addresses in fleet.yaml" if bad else ""))

    def _shipped_rows(self, probe: dict) -> None:
        """python, runtime, ray and rayfleet for a fleet whose runtime rayfleet installs."""
        lock = self.lock
        assert lock is not None
        here = f"{probe['python']} {probe['machine']}"
        if not lock.python_ok(probe["python"]):
            self.put(self.res("python", False, f"python3 is {probe['python']} here; the runtime is Python "
                                               f"{lock.python} (this machine's)",
                              f"install Python {lock.python} as python3 on {self.node.host}, or run rayfleet "
                              f"with Python {'.'.join(probe['python'].split('.')[:2])}"))
        elif probe["machine"] != lock.machine:
            self.put(self.res("python", False, f"{here}: the runtime's wheels are {lock.machine}",
                              f"run rayfleet on a {probe['machine']} machine, or use {lock.machine} nodes"))
        else:
            self.put(self.res("python", True, here))
        rt = probe.get("runtime") or {}
        if rt.get("installed"):
            self.put(self.res("runtime", True, f"installed ({lock.digest})"))
        elif rt.get("others"):
            self.put(self.res("runtime", True, f"different ({', '.join(rt['others'])}); "
                                               f"'rayfleet up' installs {lock.digest}"))
        else:
            self.put(self.res("runtime", True, f"to install ({lock.digest}): 'rayfleet up' installs it"))
        versions = dict(p.split("==", 1) for p in lock.pins)
        self.facts["ray"] = versions.get("ray")
        self.put(self.res("ray", True, f"{versions.get('ray')} (the runtime's)"))
        self.put(self.res("rayfleet", True, f"{versions.get('rayfleet')} (the runtime's)"))

    def _disk_row(self, free_gib: float) -> CheckResult:
        ok = free_gib >= MIN_FREE_DISK_GIB
        return self.res("disk", ok, f"{free_gib:.1f} GiB free in {self.fleet.temp_dir}",
                        "" if ok else f"free at least {MIN_FREE_DISK_GIB} GiB, or set temp_dir elsewhere")

    def _gpus_row(self, rc: int, out: str) -> CheckResult:
        have = sum(1 for ln in out.splitlines() if ln.startswith("GPU "))
        ok = rc == 0 and have >= self.gpus_wanted
        return self.res("gpus", ok, f"{have} GPU(s) visible, {self.gpus_wanted} asked",
                        "" if ok else "install the NVIDIA driver, or lower num_gpus")
