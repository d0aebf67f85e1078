"""Lab hosts that are whole machines: systemd is their PID 1 (the system manager), for tests of what
rayfleet does with a machine's systemd as root (the head's system unit: restarts, boot). Needs root.

A machine is a lab host (``hosts.HostLab``: a network namespace on the lab's bridge, its own PID
namespace, sshd with key logins) that also has a root of its own and boots it: ``/`` is a directory on
this machine's disk (``Machine.machine_root``; it outlives a reboot, as a disk does) holding a copy of
this machine's ``/etc`` and private ``/root``, ``/home``, ``/var``; ``/usr`` is this machine's,
read-only; ``/run``, ``/tmp`` and ``/dev`` are fresh at each boot; the paths the tests need (the venv,
the Python it links to, the checkout: ``keep``) are bound at the same place. Then
``/lib/systemd/systemd`` runs as the namespace's PID 1, in cgroups of its own (a cgroup namespace), told
it runs in a container (``container=``), and boots ``multi-user.target``.

What it boots is the machine's own systemd and unit files, with this machine's *enabled* units left out
(``/etc/systemd/system`` is replaced: the machine's PostgreSQL, Redis, sshd... are not the lab's), the
units that would touch the kernel or the console masked (sysctl, modules, udev, time sync, gettys), no
SysV scripts, no fstab, and one unit of the lab's own: sshd on the machine's address. Its journal,
logind and D-Bus run as on any machine.

``Machine.reboot()`` is ``systemctl reboot`` inside (every unit stopped in order; systemd, as a
container's PID 1, then exits) and a boot again on the same root; ``Machine.power_cut()`` SIGKILLs PID 1
(every process of the machine with it) and boots again.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rayfleet.testing.hosts import Host, HostLab, _cgroup_mount_commands, _run, _user_cgroups, sshd_config

__all__ = ["Machine", "MachineLab"]

# Units of this machine's systemd a lab machine must not run (masked): they change the kernel, the clock
# or devices that are this machine's, or wait for a console.
_MASKED = ("systemd-sysctl.service", "systemd-modules-load.service", "systemd-udevd.service",
           "systemd-udevd-control.socket", "systemd-udevd-kernel.socket", "systemd-udev-trigger.service",
           "systemd-udev-settle.service", "systemd-timesyncd.service", "systemd-remount-fs.service",
           "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "systemd-hwdb-update.service",
           "systemd-firstboot.service", "systemd-random-seed.service", "ldconfig.service",
           "getty.target", "getty@tty1.service", "serial-getty@ttyS0.service", "console-getty.service",
           "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
           "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "logrotate.timer")
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass
class Machine(Host):
    keep: list[str] = field(default_factory=list)
    booted: int = 0   # how many times it booted

    @property
    def machine_root(self) -> Path:
        """The machine's ``/``, seen from outside."""
        return self.dir / "machine"

    @property
    def root(self) -> Path:
        return self.machine_root / "root"

    def home(self, user: str) -> Path:
        return self.machine_root / "home" / user

    def exec(self, command: str, *, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """Run a shell command inside the machine (all its namespaces, its root), as root."""
        assert self.init_pid is not None
        return subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", "--", "bash", "-c", command],
                              capture_output=True, text=True, timeout=timeout, check=check)

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``systemctl ARGS`` against the machine's system manager."""
        return self.exec("systemctl " + shlex.join(args), timeout=timeout)

    def boot(self, timeout: float = 60) -> None:
        """Start the machine's systemd as PID 1; return once it answers and the lab's sshd runs (units it starts
        at boot, e.g. a head's, may still be starting)."""
        for cg in self.cgroups:
            cg.mkdir(exist_ok=True)
        r = self.machine_root
        keep = []
        for p in self.keep:
            keep.append(f"mkdir -p {shlex.quote(str(r) + p)} && mount --bind {shlex.quote(p)} {shlex.quote(str(r) + p)}")
        setup = " && ".join([
            f"mount --bind {r} {r}",
            f"mount --bind /usr {r}/usr", f"mount -o remount,bind,ro {r}/usr",
            f"mount -t proc proc {r}/proc",
            f"mount -t sysfs -o ro sysfs {r}/sys",
            f"mount -t tmpfs -o mode=755 tmpfs {r}/run",
            f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp",
            f"mount -t tmpfs -o mode=755 tmpfs {r}/dev",
            *(f"touch {r}/dev/{d} && mount --bind /dev/{d} {r}/dev/{d}" for d in _DEVICES),
            f"mkdir {r}/dev/pts {r}/dev/shm",
            f"mount -t devpts -o newinstance,ptmxmode=0666 devpts {r}/dev/pts",
            f"ln -s pts/ptmx {r}/dev/ptmx",
            f"mount -t tmpfs -o mode=1777 tmpfs {r}/dev/shm",
            *keep,
            f"hostname {self.name}",
            f"cd {r}", "pivot_root . old_root", "umount -l /old_root",
            *_cgroup_mount_commands(),
            "exec env -i container=rayfleet-lab PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd",
        ])
        join = "; ".join(f"echo $$ > {cg}/cgroup.procs" for cg in self.cgroups)
        # (the cgroups are joined before `ip netns exec`, which gives its command a /sys without them)
        self.proc = subprocess.Popen(
            ["sh", "-c", f"{join}; exec ip netns exec {self.netns} unshare --pid --fork --mount --cgroup --uts "
                         f"--ipc --propagation private --kill-child -- bash -c {shlex.quote(setup)}"],
            stdin=subprocess.DEVNULL, stdout=open(self.dir / "init.log", "a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.init_pid = HostLab._child_of(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            state = self.systemctl("is-system-running").stdout.strip() if self._pid1_is_systemd() else ""
            if state in ("starting", "running", "degraded") and \
                    self.systemctl("is-active", "lab-sshd.service").stdout.strip() == "active":
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"machine {self.name} did not boot (state {state!r}):\n"
                                   + (self.dir / "init.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        self.booted += 1
        if state == "degraded":
            failed = self.systemctl("--failed", "--no-legend", "--plain").stdout
            print(f"machine {self.name} booted, degraded: {failed.strip()}")

    def _pid1_is_systemd(self) -> bool:
        try:
            return os.readlink(f"/proc/{self.init_pid}/exe").endswith("/systemd")
        except OSError:
            return False

    def _wait_down(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def reboot(self, timeout: float = 120) -> None:
        """``systemctl reboot`` inside, then boot again on the same root (its disk)."""
        self.systemctl("reboot", "--no-block")
        self._wait_down(timeout)
        self.boot()

    def power_cut(self) -> None:
        """Every process of the machine SIGKILLed at once, then a boot on the same root."""
        self.kill()
        self.boot()

@dataclass
class MachineLab(HostLab):
    """N machines (see the module's docstring) on a bridge of their own. Use as a context manager."""

    subnet: str = "10.213.12"
    prefix: str = "rfm"

    def _keep_paths(self) -> list[str]:
        # Nothing of this machine's filesystem is shared with a machine but /usr: keep every path asked for.
        paths = {str(Path(p).resolve()) for p in self.keep} | {str(Path(sys.base_prefix).resolve()),
                                                                 str(Path(sys.prefix).resolve())}
        return sorted(p for p in paths if not p.startswith("/usr/"))

    def _make_host(self, i: int) -> Machine:
        name = f"{self.prefix}{i}"
        ip = f"{self.subnet}.{11 + i}"
        hdir = self.workdir / name
        m = Machine(name=name, ip=ip, dir=hdir, netns=name, user=self.user, uid=self.uid, keep=self._keep_paths(),
                    cgroups=_user_cgroups(f"{self.prefix}-{name}"))
        self._make_machine_root(m)
        self._make_netns(name, ip)
        m.boot()
        return m

    def _make_machine_root(self, m: Machine) -> None:
        r = m.machine_root
        shutil.rmtree(r, ignore_errors=True)
        for d in ("usr", "proc", "sys", "dev", "run", "tmp", "old_root", "home", "var/lib/systemd", "var/log",
                  "var/cache", "var/spool", "var/tmp"):
            (r / d).mkdir(parents=True)
        os.chmod(r / "tmp", 0o1777)
        os.chmod(r / "var" / "tmp", 0o1777)
        (r / "var" / "run").symlink_to("/run")
        (r / "var" / "lock").symlink_to("/run/lock")
        for d in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            top = Path("/") / d
            if top.is_symlink():
                (r / d).symlink_to(os.readlink(top))
            elif top.is_dir():
                raise RuntimeError(f"a machine needs a merged /usr (/{d} is a directory here)")
        shutil.copytree("/etc", r / "etc", symlinks=True)
        etc = r / "etc"
        (etc / "hostname").write_text(m.name + "\n")
        (etc / "fstab").write_text("# (a lab machine: its mounts are made before it boots)\n")
        (etc / "machine-id").write_text("")   # systemd makes one at boot
        for d in ("init.d", "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d"):
            shutil.rmtree(etc / d, ignore_errors=True)
        units = etc / "systemd" / "system"
        shutil.rmtree(units)
        (units / "multi-user.target.wants").mkdir(parents=True)
        (units / "default.target").symlink_to("/lib/systemd/system/multi-user.target")
        for u in _MASKED:
            (units / u).symlink_to("/dev/null")
        if not (m.dir / "ssh_host_ed25519_key").exists():
            m.dir.mkdir(parents=True, exist_ok=True)
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(m.dir / "ssh_host_ed25519_key"))
        for suffix in ("", ".pub"):
            shutil.copy(m.dir / f"ssh_host_ed25519_key{suffix}", etc / "ssh" / f"lab_host_ed25519_key{suffix}")
        os.chmod(etc / "ssh" / "lab_host_ed25519_key", 0o600)
        (etc / "ssh" / "lab_sshd_config").write_text(
            sshd_config(m.ip, "/etc/ssh/lab_host_ed25519_key", "/run/lab-sshd.pid"))
        (units / "lab-sshd.service").write_text("\n".join([
            "[Unit]", "Description=the lab's sshd (key logins on the machine's address)", "",
            "[Service]", "ExecStart=/usr/sbin/sshd -D -f /etc/ssh/lab_sshd_config", "RuntimeDirectory=sshd",
            "Restart=on-failure", "", "[Install]", "WantedBy=multi-user.target", ""]))
        (units / "multi-user.target.wants" / "lab-sshd.service").symlink_to("../lab-sshd.service")
        (etc / "systemd" / "system-generators").mkdir(exist_ok=True)
        (etc / "systemd" / "system-generators" / "systemd-sysv-generator").symlink_to("/dev/null")
        self._make_root_home(r / "root")
        self._make_user(r)
