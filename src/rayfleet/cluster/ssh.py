"""Running commands on fleet nodes over SSH (the system ``ssh`` client).

Contract of ``SSHRunner.run``: runs one shell command on one node and returns
its exit code and output; never raises for a non-zero exit; raises
``SSHError`` only when the node can't be reached or the command times out, so
callers can tell "the node said no" from "the node is not there". Safe to call
from many threads at once.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rayfleet.errors import SSHError

__all__ = ["SSHError", "Result", "SSHRunner", "host_key_fingerprints", "fingerprints_of", "known_name", "KEY_CHANGED"]

# What ssh says (its last line) when a host's key is not the one known_hosts holds for it.
KEY_CHANGED = "Host key verification failed."


def _fingerprints(text: str) -> list[str]:
    """``SHA256:... (ED25519)`` for each key line of ``ssh-keygen -l`` output: ``BITS SHA256:... COMMENT (TYPE)``
    from a key file, ``HOST TYPE SHA256:...`` from ``-F HOST``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        at = next((i for i, p in enumerate(parts) if p.startswith("SHA256:")), None)
        if at is None or line.startswith("#"):
            continue
        kind = parts[-1] if parts[-1].startswith("(") else f"({parts[at - 1]})"
        out.append(f"{parts[at]} {kind}")
    return out


def known_name(host: str, port: int) -> str:
    """How known_hosts (and ssh-keyscan, ssh-keygen -F/-R) name a host on a port."""
    return host if port == 22 else f"[{host}]:{port}"


def host_key_fingerprints(host: str, port: int, known_hosts: Path) -> tuple[list[str], list[str]]:
    """(the fingerprints ``known_hosts`` holds for the host, the ones it offers now)."""
    name = known_name(host, port)
    try:
        known = subprocess.run(["ssh-keygen", "-l", "-F", name, "-f", str(known_hosts)], capture_output=True,
                               text=True, timeout=10).stdout
        scan = subprocess.run(["ssh-keyscan", "-p", str(port), "-T", "5", host], capture_output=True, text=True,
                              timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return [], []
    return _fingerprints(known), fingerprints_of(scan) if scan.strip() else []


def fingerprints_of(keys: str) -> list[str]:
    """``SHA256:... (TYPE)`` of each key in ``keys`` (known_hosts / ssh-keyscan lines)."""
    try:
        out = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=keys, capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return _fingerprints(out)


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class SSHRunner:
    """SSH to one node. ``known_hosts``: the fleet's pinned host keys; a host whose key is not there (or
    another) is refused (``hostkeys.py`` pins new hosts, with the user's consent)."""

    host: str
    user: str = "root"
    key: str | None = None
    port: int = 22
    known_hosts: Path | None = None
    connect_timeout_s: int = 5

    def args(self) -> list[str]:
        a = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes",
             "-o", f"ConnectTimeout={self.connect_timeout_s}",
             "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if self.known_hosts is not None:
            a += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            a += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        return a + [f"{self.user}@{self.host}"]

    def run(self, command: str, *, timeout_s: float = 60, input: str | None = None) -> Result:
        try:
            p = subprocess.run(self.args() + ["bash -c " + shlex.quote(command)], capture_output=True,
                               text=True, timeout=timeout_s, input=input,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise SSHError(f"{self.host}: command timed out after {timeout_s:.0f} s: {command[:80]}") from e
        except OSError as e:
            raise SSHError(f"Can't run ssh: {e}", hint="Install the OpenSSH client.") from e
        if p.returncode == 255:  # ssh's own failure: connection, auth, host key
            reason = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "connection failed"
            raise SSHError(f"{self.user}@{self.host}:{self.port}: {reason}")
        return Result(p.returncode, p.stdout, p.stderr)

    def put_text(self, path: str, text: str, mode: int = 0o600, timeout_s: float = 30) -> None:
        """Write a file on the node (parent dirs created), with the given mode."""
        q = shlex.quote(path)
        r = self.run(f"umask 077; mkdir -p $(dirname {q}) && cat > {q} && chmod {mode:o} {q}",
                     input=text, timeout_s=timeout_s)
        if not r.ok:
            raise SSHError(f"{self.host}: could not write {path}: {r.stderr.strip()}")
