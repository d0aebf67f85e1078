"""The head's supervisor as a systemd unit, where the head runs systemd: systemd starts the supervisor
again when it dies and, the unit being enabled, when the machine boots; the supervisor starts the head's
Ray on the same store, so the workers rejoin as the same nodes and the services come back.

Run on the head by ``node_start`` (Python's standard library only). Which manager:

- the SSH user is root: a system unit, ``/etc/systemd/system/rayfleet-head-NAME.service``, wanted by
  ``multi-user.target``;
- any other user: a user unit, ``~/.config/systemd/user/rayfleet-head-NAME.service``, wanted by
  ``default.target``. A user's units start at boot only when the user lingers (``loginctl
  enable-linger``): rayfleet asks logind for it, and says so when that is refused.

Neither (no systemd, as in containers; no user manager for that user): ``None``, and rayfleet's own
watchdog (the same supervisor, in a session of its own) does the job while the machine runs.

The unit is ``Type=notify``: ``systemctl start`` returns once the supervisor's first ``ray start
--head`` is done (READY=1) and fails when it fails. ``Restart=on-failure``: a supervisor that dies is
started again (a supervisor that ends by itself, because ``rayfleet down`` removed its record, is
not). ``KillMode=mixed``: when it dies, what is left of the head is SIGKILLed (as the watchdog's
``ray stop --force`` does), and the new supervisor starts the head afresh on the store. Not
``control-group``: that SIGTERMs Ray's processes first, Ray takes it for an intended shutdown, and after
such a restart the dashboard's Serve API did not answer for minutes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Unit", "unit_name", "find", "unit_text", "install_and_start", "stop_shell", "notify"]

START_TIMEOUT_S = 180


def unit_name(cluster: str) -> str:
    return f"rayfleet-head-{cluster}.service"


@dataclass(frozen=True)
class Unit:
    """Where the head's unit goes: ``scope`` "system" or "user", its file, and whether it starts at boot
    (``at_boot``; ``why_not``: what to do when it doesn't)."""

    scope: str
    name: str
    path: str
    at_boot: bool = True
    why_not: str = ""

    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        cmd = ["systemctl", *(["--user"] if self.scope == "user" else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30,
                              env=_user_env() if self.scope == "user" else None, stdin=subprocess.DEVNULL)

    def describe(self) -> dict:
        return asdict(self)


def _user_env() -> dict[str, str]:
    """``systemctl --user`` finds the user's manager through XDG_RUNTIME_DIR; a session without one (no
    pam_systemd: `su`, some SSH setups) gets the standard ``/run/user/UID``."""
    env = dict(os.environ)
    if not env.get("XDG_RUNTIME_DIR"):
        env["XDG_RUNTIME_DIR"] = f"/run/user/{os.getuid()}"
    return env


def _answers(cmd: list[str], env: dict | None = None) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, env=env, stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find(cluster: str) -> tuple[Unit | None, str]:
    """The unit this node can have, or (None, why not)."""
    name = unit_name(cluster)
    if not Path("/run/systemd/system").is_dir():
        return None, "this machine does not run systemd"
    if os.getuid() == 0:
        if not _answers(["systemctl", "show-environment"]):
            return None, "systemd does not answer (systemctl show-environment)"
        return Unit("system", name, f"/etc/systemd/system/{name}"), ""
    if not _answers(["systemctl", "--user", "show-environment"], _user_env()):
        return None, f"{_user()} has no systemd user manager (systemctl --user does not answer)"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit = Unit("user", name, str(config / "systemd" / "user" / name))
    if _lingers():
        return unit, ""
    return Unit(unit.scope, name, unit.path, at_boot=False,
                why_not=f"{_user()}'s units start at boot only when the user lingers: run 'sudo loginctl "
                        f"enable-linger {_user()}' on this machine once"), ""


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _lingers() -> bool:
    """Lingering is on for this user (logind's flag file), or logind turns it on when asked."""
    flag = Path("/var/lib/systemd/linger") / _user()
    if flag.exists():
        return True
    _answers(["loginctl", "enable-linger"])   # allowed by polkit on many systems for one's own user
    return flag.exists()


def unit_text(unit: Unit, spec_path: str, log: str, description: str) -> str:
    """The unit that runs the supervisor (``python -m rayfleet.cluster.supervisor SPEC``, this venv's)."""
    system = unit.scope == "system"
    return "\n".join([
        "[Unit]",
        f"Description={description}",
        # (a user's manager has no network-online.target: it starts once the user's session may)
        *(["After=network-online.target", "Wants=network-online.target"] if system else []),
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        f"ExecStart={shlex.quote(sys.executable)} -m rayfleet.cluster.supervisor {shlex.quote(spec_path)}",
        "Restart=on-failure",
        "RestartSec=3",
        f"TimeoutStartSec={START_TIMEOUT_S}",
        "KillMode=mixed",
        "TimeoutStopSec=20",
        "LimitNOFILE=65536",
        f"StandardOutput=append:{log}",
        f"StandardError=append:{log}",
        "",
        "[Install]",
        "WantedBy=" + ("multi-user.target" if system else "default.target"),
        "",
    ])


def install_and_start(unit: Unit, text: str) -> tuple[int, str]:
    """Write, enable and (re)start the unit; the supervisor's PID and ``started`` or why it failed."""
    path = Path(unit.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    for args in (["daemon-reload"], ["enable", unit.name], ["restart", unit.name]):
        r = unit.systemctl(*args)
        if r.returncode != 0:
            why = (r.stderr.strip() or r.stdout.strip()).splitlines()
            return 0, f"systemctl {' '.join(args)} failed: {why[-1] if why else f'exit {r.returncode}'}"
    pid = unit.systemctl("show", "--property=MainPID", "--value", unit.name).stdout.strip()
    return int(pid) if pid.isdigit() else 0, "started"


def stop_shell(cluster: str) -> str:
    """Shell that stops, disables and removes the head's unit of ``cluster``, user or system, if there is
    one (``rayfleet down``, and node_start before a new head)."""
    name = shlex.quote(unit_name(cluster))
    user = f'"${{XDG_CONFIG_HOME:-$HOME/.config}}"/systemd/user/{name}'
    return (f"if [ -f {user} ]; then export XDG_RUNTIME_DIR=\"${{XDG_RUNTIME_DIR:-/run/user/$(id -u)}}\"; "
            f"systemctl --user disable --now {name} >/dev/null 2>&1; rm -f {user}; "
            "systemctl --user daemon-reload >/dev/null 2>&1; fi; "
            f"if [ \"$(id -u)\" = 0 ] && [ -f /etc/systemd/system/{name} ]; then "
            f"systemctl disable --now {name} >/dev/null 2>&1; rm -f /etc/systemd/system/{name}; "
            "systemctl daemon-reload >/dev/null 2>&1; fi; true")


def notify(socket_path: str, message: str) -> None:
    """sd_notify(3): ``message`` to systemd's socket (NOTIFY_SOCKET); nothing without one."""
    import socket

    if not socket_path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect("\0" + socket_path[1:] if socket_path.startswith("@") else socket_path)
        s.sendall(message.encode())
