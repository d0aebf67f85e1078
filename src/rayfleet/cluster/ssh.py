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

__all__ = ["SSHError", "Result", "SSHRunner"]


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
    """SSH to one node. ``known_hosts`` keeps host keys per fleet (accept-new)."""

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
            a += ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={self.known_hosts}"]
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
