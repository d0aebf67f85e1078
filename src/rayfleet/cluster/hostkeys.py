"""The SSH host keys of a fleet's hosts: pinned at first contact, with the user's consent.

Every SSH connection rayfleet makes checks the host's key against the fleet's own
``known_hosts`` (``StrictHostKeyChecking=yes``, ``ssh.py``). A host that is not in it yet
is met here first: its keys are fetched (``ssh-keyscan``), their fingerprints shown, and
they are pinned only when the user says so: on a terminal by answering yes, in scripts
with ``--accept-new-hosts``. Compare the fingerprints with the host's own
(``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`` on it) before saying yes: that is
the one moment someone between you and the host could slip in a key of their own.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rayfleet.cluster.ssh import fingerprints_of, known_name
from rayfleet.config.fleet import FleetSpec

__all__ = ["NewHost", "unpinned", "pin"]


@dataclass(frozen=True)
class NewHost:
    host: str            # as fleet.yaml names it (the name ssh is given)
    address: str
    port: int
    keys: str            # ssh-keyscan's lines ('' when the host did not answer)
    fingerprints: list[str]

    @property
    def label(self) -> str:
        return self.host if self.host == self.address else f"{self.host} ({self.address})"


def _pinned(host: str, port: int, known_hosts: Path) -> list[str]:
    """The key lines ``known_hosts`` holds for the host ([] if none)."""
    if not known_hosts.is_file():
        return []
    r = subprocess.run(["ssh-keygen", "-F", known_name(host, port), "-f", str(known_hosts)], capture_output=True,
                       text=True, timeout=10)
    return [ln for ln in r.stdout.splitlines() if ln.strip() and not ln.startswith("#")] if r.returncode == 0 else []


def _as(lines: list[str] | str, host: str, port: int) -> str:
    """Key lines re-labelled for ``host``."""
    lines = lines.splitlines() if isinstance(lines, str) else lines
    return "".join(f"{known_name(host, port)} {ln.split(None, 1)[1]}\n" for ln in lines if len(ln.split()) >= 3)


def _scan(host: str, address: str, port: int) -> NewHost:
    try:
        keys = subprocess.run(["ssh-keyscan", "-p", str(port), "-T", "5", host], capture_output=True, text=True,
                              timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        keys = ""
    keys = "".join(line + "\n" for line in keys.splitlines() if line.strip() and not line.startswith("#"))
    return NewHost(host, address, port, keys, fingerprints_of(keys) if keys else [])


def unpinned(fleet: FleetSpec, known_hosts: Path) -> list[NewHost]:
    """The fleet's hosts whose keys ``known_hosts`` does not hold yet, with the keys they offer now
    (none for a host that did not answer: ``check`` then says why).

    Keys are pinned under the host's name and its address (Ray's launcher connects by address).
    A host pinned by name whose address is missing gets the name's keys under its address here,
    with no question: a connection to that address must then show the key pinned for the name."""
    todo = {}
    for n in fleet.nodes:
        _, _, port = fleet.ssh_for(n)
        by_name = _pinned(n.host, port, known_hosts)
        if not by_name:
            todo.setdefault((n.host, port), n.address)
        elif n.address != n.host and not _pinned(n.address, port, known_hosts):
            _append(known_hosts, _as(by_name, n.address, port))
    if not todo:
        return []
    with ThreadPoolExecutor(min(16, len(todo))) as pool:
        return list(pool.map(lambda kv: _scan(kv[0][0], kv[1], kv[0][1]), todo.items()))


def _append(known_hosts: Path, text: str) -> None:
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(text)


def pin(known_hosts: Path, hosts: list[NewHost]) -> None:
    """Add the hosts' keys to ``known_hosts`` (created 0600 in a 0700 directory), under their names
    and their addresses."""
    _append(known_hosts, "".join(h.keys + (_as(h.keys, h.address, h.port) if h.address != h.host else "")
                                 for h in hosts))
