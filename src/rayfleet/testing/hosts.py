"""Real hosts on one Linux machine, for multi-host tests (needs root).

A host is a network namespace with its own IP on a private bridge, its own PID
namespace (so ``ray stop`` on one host can't touch another), its own mount
namespace with private ``/root``, ``/home`` and ``/tmp``, and its own sshd with key auth
for root and for an unprivileged user (``HostLab.user``: in a passwd/group of the host's own,
bound over /etc/passwd and /etc/group inside the host only; a bare home, nothing on PATH).
rayfleet reaches these hosts over SSH exactly as it reaches real machines. Only these
hosts' addresses (and loopback) are ever contacted.

Paths the hosts must still see under ``/root`` or ``/tmp`` (the venv, the Python
it links to, the checkout) are bound back inside each host (``keep``).
Everything else on the filesystem is shared, like an NFS mount would be.

``systemd=True``: each host also has a private ``/run`` that says the machine runs systemd, and
boots the unprivileged user's systemd manager (the real ``systemd --user``, in a cgroup of its own
delegated to the user) as a machine does for a user who lingers (``loginctl enable-linger``; the
host's private ``/var/lib/systemd/linger`` says so). No system manager runs: the machine's
services are not the host's. ``Host.reboot_user()`` kills every process of the user in the host
and boots the manager again: what a reboot does to the user's side of a machine.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Host", "HostLab", "lab_supported"]

_SSHD = "/usr/sbin/sshd"


def lab_supported() -> str | None:
    """None when this machine can run the lab, else why not."""
    if os.geteuid() != 0:
        return "needs root (network and PID namespaces)"
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "rsync"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (apt-get install openssh-server rsync iproute2)"
    if not Path(_SSHD).exists():
        return "sshd is not installed (apt-get install openssh-server)"
    return None


def _run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def _cgroup_mounts() -> list[tuple[str, str]]:
    """This machine's cgroup hierarchies a user manager uses: (mount point, fstype) of cgroup2 and, with
    the hybrid layout, of systemd's v1 one (systemd tracks its units there)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            found.append((fields[4], fstype))
    return found


def _user_cgroups(name: str) -> list[Path]:
    """The cgroups (not yet made) of a user manager called ``name``, one per hierarchy."""
    return [Path(mp) / name for mp, _ in _cgroup_mounts()]


def _cgroup_mount_commands() -> list[str]:
    """Shell that mounts, in a host's mount namespace, the hierarchies of ``_cgroup_mounts`` where this
    machine has them (``ip netns exec`` gave the host a fresh /sys without them)."""
    cmds = []
    mounts = _cgroup_mounts()
    if any(mp != "/sys/fs/cgroup" for mp, _ in mounts):
        cmds.append("mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup")
    for mp, fstype in mounts:
        how = "-t cgroup2 cgroup2" if fstype == "cgroup2" else "-t cgroup -o none,name=systemd cgroup"
        cmds.append(f"mkdir -p {mp} && mount {how} {mp}")
    return cmds


def sshd_config(ip: str, host_key: str, pid_file: str) -> str:
    """A lab host's sshd: key logins only (root too), on the host's address."""
    return "\n".join([
        f"ListenAddress {ip}", "Port 22", f"HostKey {host_key}", f"PidFile {pid_file}",
        "AuthorizedKeysFile .ssh/authorized_keys", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "UseDNS no", "StrictModes yes",
        "MaxStartups 100:30:200", "MaxSessions 100", "Subsystem sftp internal-sftp", ""])


def _remove_cgroups(cgroups: list[Path], timeout: float = 10) -> None:
    """Remove cgroups made for a user manager, their children first, once their processes are gone."""
    deadline = time.monotonic() + timeout
    for top in cgroups:
        while top.exists():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                try:
                    d.rmdir()
                except OSError:
                    pass
            if top.exists():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)


@dataclass
class Host:
    name: str
    ip: str
    dir: Path
    netns: str
    proc: subprocess.Popen | None = None
    init_pid: int | None = None
    user: str = ""
    uid: int = 0
    cgroups: list[Path] = field(default_factory=list)   # the user manager's (systemd=True)
    manager: subprocess.Popen | None = None

    @property
    def fqdn(self) -> str:
        """The host's name, in /etc/hosts while the lab exists (.test: reserved for testing, RFC 2606)."""
        return f"{self.name}.rayfleet.test"

    @property
    def root(self) -> Path:
        """This host's /root, seen from outside."""
        return self.dir / "root"

    def home(self, user: str) -> Path:
        """A user's home on this host (/home/USER inside), seen from outside."""
        return self.dir / "home" / user

    def exec(self, command: str, *, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """Run a shell command inside the host (all its namespaces), as root."""
        assert self.init_pid is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-p", "--", "bash", "-c", command],
            capture_output=True, text=True, timeout=timeout, check=check)

    def boot_user_manager(self, timeout: float = 30) -> None:
        """Start the user's systemd manager in the host, in its delegated cgroup, as at boot; return once
        ``systemctl --user`` answers (its enabled units may still be starting)."""
        assert self.cgroups, "a lab with systemd=True"
        for cg in self.cgroups:
            cg.mkdir(exist_ok=True)
            for path in [cg, *cg.iterdir()]:
                os.chown(path, self.uid, self.uid)
        join = "; ".join(f"echo $$ > {cg}/cgroup.procs" for cg in self.cgroups)
        env = (f"HOME=/home/{self.user} USER={self.user} LOGNAME={self.user} SHELL=/bin/bash "
               f"PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR=/run/user/{self.uid}")
        self.manager = subprocess.Popen(
            ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-p", "--", "sh", "-c",
             f"{join}; exec setpriv --reuid={self.uid} --regid={self.uid} --init-groups env -i {env} "
             "/lib/systemd/systemd --user"],
            stdin=subprocess.DEVNULL, stdout=open(self.dir / "user-manager.log", "a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        # (answering is enough: "starting" lasts as long as the units it starts at boot, e.g. a head's unit,
        # whose `ray start --head` took over 30 s once with the whole suite running)
        while self.user_systemctl("is-system-running").stdout.strip() not in ("starting", "running", "degraded"):
            if time.monotonic() > deadline or self.manager.poll() is not None:
                log = (self.dir / "user-manager.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the user manager on {self.name} did not start:\n{log}")
            time.sleep(0.2)

    def user_systemctl(self, *args: str) -> subprocess.CompletedProcess:
        """``systemctl --user ARGS`` as the host's user, inside the host."""
        return self.exec(f"setpriv --reuid={self.uid} --regid={self.uid} --init-groups env "
                         f"XDG_RUNTIME_DIR=/run/user/{self.uid} systemctl --user " + shlex.join(args))

    def reboot_user(self) -> None:
        """Every process of the user in the host SIGKILLed (its manager, its services, their children),
        then the manager booted again."""
        self.exec(f"pkill -9 -u {self.uid}; sleep 0.5; pkill -9 -u {self.uid}; true")
        if self.manager is not None:
            self.manager.wait(timeout=10)
        self.boot_user_manager()

    def kill(self) -> None:
        """Every process of the host SIGKILLed: its PID namespace's PID 1 (the rest go with it), then unshare."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.init_pid is not None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()  # unshare ignores SIGTERM while it waits for its child
        self.proc.wait(timeout=10)

    def sshd_running(self) -> bool:
        return self.exec(f"test -f {self.dir}/sshd.pid && kill -0 $(cat {self.dir}/sshd.pid)").returncode == 0

    def stop_sshd(self) -> None:
        self.exec(f"kill $(cat {self.dir}/sshd.pid) && sleep 0.3; rm -f {self.dir}/sshd.pid")

    def start_sshd(self) -> None:
        self.exec(f"{_SSHD} -f {self.dir}/sshd_config", check=True)


@dataclass
class HostLab:
    """Create and remove N hosts on a bridge. Use as a context manager."""

    count: int
    workdir: Path
    subnet: str = "10.213.7"   # private /24 used only on this bridge
    prefix: str = "rfh"
    keep: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    user: str = "rayfleet"     # the unprivileged user every host has (besides root)
    uid: int = 4242
    systemd: bool = False      # the user's systemd manager in every host (see the module's docstring)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def key(self) -> Path:
        return self.workdir / "id_ed25519"

    def __enter__(self) -> "HostLab":
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def _keep_paths(self) -> list[str]:
        paths = {str(Path(p).resolve()) for p in self.keep}
        paths.add(str(Path(sys.base_prefix).resolve()))
        paths.add(str(Path(sys.prefix).resolve()))
        return sorted(p for p in paths if p.startswith(("/root/", "/tmp/")))

    def create(self) -> None:
        if self.systemd and not Path("/lib/systemd/systemd").exists():
            raise RuntimeError("systemd=True needs systemd (apt-get install systemd)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        if self.systemd and not self._LINGER.exists():
            # the mount point of the hosts' private linger directory: a machine where logind never ran lacks
            # it; made here and removed again by destroy
            self._LINGER.mkdir(parents=True)
            self._made_linger = True
        if not self.key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        _run("ip", "link", "del", self.bridge, check=False)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i in range(self.count):
            self.hosts.append(self._make_host(i))
        self._name_hosts()
        for h in self.hosts:
            self._wait_ssh(h)
            self._wait_ssh(h, self.user)
            if self.systemd:
                h.boot_user_manager()

    _LINGER = Path("/var/lib/systemd/linger")
    _made_linger = False

    # The hosts' names in /etc/hosts (shared with the hosts: their mount namespaces bind only /root and
    # /tmp), one marked line each; removed again by destroy (and stale ones of a killed run by create).
    _HOSTS_FILE = Path("/etc/hosts")

    @property
    def _marker(self) -> str:
        return f"# rayfleet-lab {self.prefix}"

    def _unname_hosts(self) -> None:
        try:
            lines = self._HOSTS_FILE.read_text().splitlines(keepends=True)
        except OSError:
            return
        kept = [ln for ln in lines if not ln.rstrip("\n").endswith(self._marker)]
        if kept != lines:
            self._HOSTS_FILE.write_text("".join(kept))  # in place: /etc/hosts may be a bind mount

    def _name_hosts(self) -> None:
        self._unname_hosts()
        text = self._HOSTS_FILE.read_text()
        if text and not text.endswith("\n"):
            text += "\n"
        self._HOSTS_FILE.write_text(text + "".join(f"{h.ip} {h.fqdn} {self._marker}\n" for h in self.hosts))

    def _make_host(self, i: int) -> Host:
        name = f"{self.prefix}{i}"
        ip = f"{self.subnet}.{11 + i}"
        hdir = self.workdir / name
        host = Host(name=name, ip=ip, dir=hdir, netns=name, user=self.user, uid=self.uid)
        (hdir / "tmp").mkdir(parents=True, exist_ok=True)
        os.chmod(hdir / "tmp", 0o1777)
        self._make_root_home(hdir / "root")
        self._make_user(hdir)
        if not (hdir / "ssh_host_ed25519_key").exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hdir / "ssh_host_ed25519_key"))
        (hdir / "sshd_config").write_text(sshd_config(ip, f"{hdir}/ssh_host_ed25519_key", f"{hdir}/sshd.pid"))
        self._make_netns(name, ip)
        ns = ["ip", "netns", "exec", name]

        binds = []
        for p in self._keep_paths():
            top, rel = ("root", p[len("/root/"):]) if p.startswith("/root/") else ("tmp", p[len("/tmp/"):])
            target = hdir / top / rel
            binds.append(f"mkdir -p {shlex.quote(str(target))} && mount --bind {shlex.quote(p)} {shlex.quote(str(target))}")
        run = []
        if self.systemd:
            # /run of the host's own: sshd's privilege separation dir, the mark of a systemd machine, the
            # user's runtime dir; lingering on for the user (logind's flag file).
            (hdir / "linger").mkdir(exist_ok=True)
            (hdir / "linger" / self.user).touch()
            host.cgroups = _user_cgroups(f"{self.prefix}-{name}-user")
            run = [*_cgroup_mount_commands(),
                   "mount -t tmpfs -o mode=755 tmpfs /run", "mkdir -p /run/sshd /run/systemd/system",
                   f"install -d -m 700 -o {self.uid} -g {self.uid} /run/user/{self.uid}",
                   f"mount --bind {hdir}/linger /var/lib/systemd/linger"]
        script = " && ".join(binds + run + [
            f"mount --bind {hdir}/etc/passwd /etc/passwd",
            f"mount --bind {hdir}/etc/group /etc/group",
            f"mount --rbind {hdir}/home /home",
            f"mount --rbind {hdir}/root /root",
            f"mount --rbind {hdir}/tmp /tmp",
            f"{_SSHD} -f {hdir}/sshd_config",
            # PID 1 of the host: reap orphans until killed.
            "trap 'exit 0' TERM; while true; do wait; sleep 1; done",
        ])
        host.proc = subprocess.Popen(
            [*ns, "unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private",
             "--kill-child", "--", "bash", "-c", script],
            stdin=subprocess.DEVNULL, stdout=open(hdir / "init.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        host.init_pid = self._child_of(host.proc.pid)
        return host

    def _make_netns(self, name: str, ip: str) -> None:
        """The network namespace ``name``, with address ``ip`` on a veth to the lab's bridge."""
        veth_host, veth_br = f"{name}a", f"{name}b"
        _run("ip", "netns", "del", name, check=False)
        _run("ip", "link", "del", veth_br, check=False)
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_br)
        _run("ip", "link", "set", veth_br, "master", self.bridge)
        _run("ip", "link", "set", veth_br, "up")
        _run("ip", "link", "set", veth_host, "netns", name)
        ns = ["ip", "netns", "exec", name]
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "addr", "add", f"{ip}/24", "dev", veth_host)
        _run(*ns, "ip", "link", "set", veth_host, "up")

    def _make_root_home(self, home: Path) -> None:
        """root's home on a host (``home``, seen from outside): the lab's key, the venv on PATH."""
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        os.chmod(home / ".ssh", 0o700)
        auth = home / ".ssh" / "authorized_keys"
        auth.write_text(Path(str(self.key) + ".pub").read_text())
        os.chmod(auth, 0o600)
        venv_bin = Path(sys.executable).parent
        # Like a real machine whose admin put the venv on PATH for login shells.
        for rc in (".bashrc", ".profile"):
            (home / rc).write_text(f'export PATH="{venv_bin}:$PATH"\n')

    def _make_user(self, hdir: Path) -> None:
        """The host's unprivileged user: passwd/group entries of the host's own, a bare home with the key."""
        (hdir / "etc").mkdir(exist_ok=True)
        for name, line in (("passwd", f"{self.user}:x:{self.uid}:{self.uid}:rayfleet lab:/home/{self.user}:/bin/bash"),
                           ("group", f"{self.user}:x:{self.uid}:")):
            base = [ln for ln in Path(f"/etc/{name}").read_text().splitlines() if not ln.startswith(f"{self.user}:")]
            (hdir / "etc" / name).write_text("\n".join(base + [line]) + "\n")
            os.chmod(hdir / "etc" / name, 0o644)
        home = hdir / "home" / self.user
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        os.chmod(hdir / "home", 0o755)
        (home / ".ssh" / "authorized_keys").write_text(Path(str(self.key) + ".pub").read_text())
        os.chmod(home, 0o700)
        os.chmod(home / ".ssh", 0o700)
        os.chmod(home / ".ssh" / "authorized_keys", 0o600)
        for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            os.chown(path, self.uid, self.uid)

    @staticmethod
    def _child_of(pid: int, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.05)
        raise RuntimeError(f"host init under unshare {pid} did not start")

    def _wait_ssh(self, host: Host, user: str = "root", timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(self.ssh_args(host, user) + ["true"], capture_output=True, text=True, timeout=15)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        log = (host.dir / "init.log").read_text(errors="replace")
        raise RuntimeError(f"sshd on {host.name} ({host.ip}) does not let {user} in: {r.stderr.strip()}\n{log}")

    def ssh_args(self, host: Host, user: str = "root") -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                f"{user}@{host.ip}"]

    def destroy(self) -> None:
        for h in self.hosts:
            h.kill()
            _run("ip", "netns", "del", h.netns, check=False)
            _run("ip", "link", "del", f"{h.name}b", check=False)
            _remove_cgroups(h.cgroups)
        _run("ip", "link", "del", self.bridge, check=False)
        self._unname_hosts()
        self.hosts = []
        if self._made_linger:
            try:
                self._LINGER.rmdir()   # only if still empty: nothing of the machine's is removed
            except OSError:
                pass
            self._made_linger = False
