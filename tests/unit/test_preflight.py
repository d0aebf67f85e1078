"""rayfleet check's probe, run on this machine through a stand-in for ssh (no Ray, no remote host).

The "host" is 127.0.0.1 reached by running the probe's command with local bash
instead of ssh; everything else (the probe script, the two rounds over the
session's stdin/stdout, the report) is the real code.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rayfleet.cluster import preflight
from rayfleet.cluster.ssh import SSHRunner
from rayfleet.config.fleet import FleetSpec

pytestmark = pytest.mark.unit

VENV = str(Path(sys.executable).parent.parent)


@dataclass(frozen=True)
class LocalRunner(SSHRunner):
    """'ssh HOST CMD' replaced by 'bash -c CMD' here; refused=True acts like a host with sshd down."""

    refused: bool = False

    def args(self) -> list[str]:
        if self.refused:
            msg = f"ssh: connect to host {self.host} port 22: Connection refused"
            return ["bash", "-c", f"echo '{msg}' >&2; exit 255", "ssh"]
        return ["bash", "-c", 'eval "$1"', "ssh"]


def _free_port_base() -> int:
    # Below the kernel's ephemeral range (32768), above the test clusters' (23000-29999).
    for base in range(30011, 32700, 37):
        ok = True
        for p in range(base, base + 20):
            s = socket.socket()
            try:
                s.bind(("0.0.0.0", p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return base
    raise RuntimeError("no free ports")


def _fleet(tmp_path, **extra) -> FleetSpec:
    b = _free_port_base()
    ports = dict(gcs=b, dashboard=b + 1, serve=b + 2, client_server=b + 3, dashboard_agent=b + 4,
                 node_manager=b + 5, object_manager=b + 6, metrics_export=b + 7, runtime_env_agent=b + 8,
                 dashboard_agent_grpc=b + 9, min_worker=b + 10, max_worker=b + 11, min_replica=b + 12,
                 max_replica=b + 17, dashboard_metrics=b + 18, autoscaler_metrics=b + 19)
    (tmp_path / "shared").mkdir(exist_ok=True)
    data = dict(name="t", head={"host": "127.0.0.1"}, python=VENV, ports=ports,
                storage={"path": str(tmp_path / "shared")}, temp_dir=str(tmp_path / "tmp"))
    data.update(extra)
    return FleetSpec.model_validate(data)


def _run(monkeypatch, fleet: FleetSpec, refused: set[str] = frozenset()) -> preflight.Report:
    def runner_for(f, node, known_hosts=None):
        return LocalRunner(host=node.host, refused=node.host in refused)

    monkeypatch.setattr(preflight, "runner_for", runner_for)
    return preflight.run_checks(fleet)


def _row(report, host, check):
    r = report.get(host, check)
    assert r is not None, (host, check)
    return r


def test_all_green_and_nothing_left_behind(monkeypatch, tmp_path):
    fleet = _fleet(tmp_path)
    t0 = time.monotonic()
    report = _run(monkeypatch, fleet)
    assert report.ok, report.failures()
    assert _row(report, "127.0.0.1", "python").detail == ".".join(map(str, sys.version_info[:3]))
    assert _row(report, "127.0.0.1", "ray").ok
    assert _row(report, "127.0.0.1", "storage").detail.endswith("shared")
    assert _row(report, "127.0.0.1", "clock").detail.startswith("skew 0.0")
    assert _row(report, "127.0.0.1", "gpus").ok is None
    assert list(Path(fleet.storage.path).iterdir()) == []  # the test file is removed
    # The ports the probe held are free again.
    s = socket.socket()
    s.bind(("127.0.0.1", fleet.ports.node_manager))
    s.close()
    assert time.monotonic() - t0 < 60


def test_port_taken_is_reported(monkeypatch, tmp_path):
    fleet = _fleet(tmp_path)
    s = socket.socket()
    s.bind(("0.0.0.0", fleet.ports.object_manager))
    s.listen()
    try:
        report = _run(monkeypatch, fleet)
    finally:
        s.close()
    assert [(r.check, r.detail) for r in report.failures()] == [
        ("ports", f"taken: object_manager {fleet.ports.object_manager}")]


def test_unreachable_worker_is_one_ssh_cross(monkeypatch, tmp_path):
    fleet = _fleet(tmp_path, workers=[{"host": "127.0.0.2"}])
    report = _run(monkeypatch, fleet, refused={"127.0.0.2"})
    fails = report.failures()
    assert [(r.host, r.check) for r in fails] == [("127.0.0.2", "ssh")]
    assert fails[0].detail == "ssh: connect to host 127.0.0.2 port 22: Connection refused"
    assert all(_row(report, "127.0.0.2", c).ok is None for c in preflight.CHECKS if c != "ssh")
    assert _row(report, "127.0.0.1", "storage").ok


def test_missing_venv_python_still_checks_disk_storage_clock(monkeypatch, tmp_path):
    fleet = _fleet(tmp_path, python=str(tmp_path / "no-venv"))
    report = _run(monkeypatch, fleet)
    fails = {r.check: r for r in report.failures()}
    assert list(fails) == ["python"]
    assert "does not run" in fails["python"].detail
    assert _row(report, "127.0.0.1", "disk").ok
    assert _row(report, "127.0.0.1", "storage").ok
    assert _row(report, "127.0.0.1", "clock").ok
    assert list(Path(fleet.storage.path).iterdir()) == []


def test_storage_missing(monkeypatch, tmp_path):
    fleet = _fleet(tmp_path)
    fleet = fleet.model_copy(update={"storage": fleet.storage.model_copy(update={"path": str(tmp_path / "nope")})})
    report = _run(monkeypatch, fleet)
    assert [(r.check, r.detail) for r in report.failures()] == [("storage", f"{tmp_path / 'nope'} does not exist")]


def test_other_ray_launcher_is_run_and_compared(monkeypatch, tmp_path):
    """A bin/ray that is not pip's launcher for the venv's Python is run, as 'ray --version'."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv / "bin" / "ray").write_text("#!/bin/sh\necho 'ray, version 2.59.0'\n")
    for f in ("python", "ray"):
        (venv / "bin" / f).chmod(0o755)
    report = _run(monkeypatch, _fleet(tmp_path, python=str(venv)))
    assert report.ok
    assert _row(report, "127.0.0.1", "ray").detail == "2.59.0"


def test_pip_launcher_version_equals_running_it(monkeypatch, tmp_path):
    import subprocess

    ran = subprocess.run([f"{VENV}/bin/ray", "--version"], capture_output=True, text=True).stdout.split()[2]
    report = _run(monkeypatch, _fleet(tmp_path))
    assert _row(report, "127.0.0.1", "ray").detail == ran


def test_host_key_fingerprints_read_both_of_ssh_keygens_formats(tmp_path):
    import subprocess

    from rayfleet.cluster.ssh import _fingerprints, host_key_fingerprints

    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    listed = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True).stdout
    fp = listed.split()[1]
    known = tmp_path / "known_hosts"
    known.write_text("node-1 " + " ".join((tmp_path / "k.pub").read_text().split()[:2]) + "\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], capture_output=True, check=True)   # hashed, as Debian's
    assert _fingerprints(listed) == [f"{fp} (ED25519)"]
    pinned, _ = host_key_fingerprints("node-1", 22, known)
    assert pinned == [f"{fp} (ED25519)"]
