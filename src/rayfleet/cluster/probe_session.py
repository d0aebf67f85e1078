"""One SSH session to one host running ``rayfleet check``'s probe (probe.py, sent as source): the
probe runs with the nodes' venv Python and talks over the session's stdin/stdout, one JSON object
per line; a thread reads the lines as they come."""

from __future__ import annotations

import json
import queue
import shlex
import subprocess
import threading
import time
from pathlib import Path

from rayfleet.cluster.ssh import SSHRunner

__all__ = ["PROBE", "ProbeSession"]

# The probe (probe.py, sent as source): runs on each host with the venv's Python, talks to
# rayfleet over the SSH session's stdin/stdout, one JSON object per line.
PROBE = (Path(__file__).parent / "probe.py").read_text()


class ProbeSession:
    """One SSH session to one host running the probe; lines are read by a thread."""

    def __init__(self, runner: SSHRunner, command: str):
        self.r = runner
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(runner.args() + ["bash -c " + shlex.quote(command)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._read_out, daemon=True).start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.time(), line.rstrip("\n")))
        self.lines.put((time.time(), None))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def read(self, deadline: float) -> tuple[float, str | None] | None:
        """The next stdout line and when it arrived; (t, None) at EOF; None on timeout."""
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def send(self, obj: dict) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def exit_code(self, timeout: float = 5) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def err_text(self) -> str:
        """What ssh wrote to stderr; all of it once the session has ended (the reader thread may lag behind)."""
        if self.proc.poll() is not None:
            self._err_reader.join(timeout=5)
        return "".join(self.stderr).strip()

    def close(self) -> None:
        """Closing stdin ends the probe (ports freed, test file removed), then the session."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
