"""The head's systemd unit (cluster/systemd_unit.py) as systemd reads it, and the supervisor's reason for a
start by systemd. The unit at work (restarts, boot) is in tests/multihost (a real user manager)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from rayfleet.cluster import systemd_unit
from rayfleet.cluster.supervisor import _why_started_again

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("scope", ["user", "system"])
def test_systemd_reads_the_unit_without_a_complaint(scope, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd)")
    unit = systemd_unit.Unit(scope, "rayfleet-head-lab.service", str(tmp_path / "rayfleet-head-lab.service"))
    text = systemd_unit.unit_text(unit, str(tmp_path / "head.json"), str(tmp_path / "supervisor.log"), "rayfleet: x")
    (tmp_path / unit.name).write_text(text)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    r = subprocess.run(["systemd-analyze", "verify", *(["--user"] if scope == "user" else []), unit.path],
                       capture_output=True, text=True, env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
    assert "Type=notify" in text and "Restart=on-failure" in text
    assert ("WantedBy=multi-user.target" if scope == "system" else "WantedBy=default.target") in text
    # a broken unit does get a complaint (the check above can fail)
    (tmp_path / unit.name).write_text(text.replace("Type=notify", "Type=notfy"))
    r = subprocess.run(["systemd-analyze", "verify", *(["--user"] if scope == "user" else []), unit.path],
                       capture_output=True, text=True, env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    assert "notfy" in r.stdout + r.stderr


def test_a_start_by_systemd_says_whether_the_machine_booted(tmp_path):
    record = tmp_path / "record.json"
    record.write_text("{}")
    assert _why_started_again(record) == "its supervisor was started again by systemd"
    os.utime(record, (0, 0))   # written before this boot
    assert _why_started_again(record) == "the machine started again"


def test_notify_sends_to_systemds_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        systemd_unit.notify(path, "READY=1")
        assert s.recv(100) == b"READY=1"
    systemd_unit.notify("", "READY=1")   # not under systemd: nothing


def test_stop_shell_removes_a_user_unit_and_is_quiet_without_one(tmp_path):
    config = tmp_path / "config"
    unit = config / "systemd" / "user" / "rayfleet-head-lab.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    env = dict(os.environ, XDG_CONFIG_HOME=str(config), XDG_RUNTIME_DIR=str(tmp_path / "no-manager"))
    t0 = time.monotonic()
    r = subprocess.run(["sh", "-c", systemd_unit.stop_shell("lab")], capture_output=True, text=True, env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "") and not unit.exists()
    r = subprocess.run(["sh", "-c", systemd_unit.stop_shell("lab")], capture_output=True, text=True, env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert time.monotonic() - t0 < 30


def test_a_supervisor_neither_asked_to_start_nor_of_a_recorded_cluster_starts_nothing(tmp_path):
    """What a unit left enabled after `rayfleet down` does at boot: the supervisor exits 0 (systemd does
    not start it again) without running ray start."""
    import sys

    from rayfleet.cluster.supervisor import HeadSpec

    ran = tmp_path / "ran"
    spec = HeadSpec(cluster_id="lab-1", args=["sh", "-c", f"touch {ran}"], log=str(tmp_path / "start.log"),
                    restarts=str(tmp_path / "restarts.json"), record=str(tmp_path / "record.json"))
    spec.save(tmp_path / "head.json")
    (tmp_path / "first-start").write_text("lab-0\n")   # asked for another cluster (an older head)
    r = subprocess.run([sys.executable, "-m", "rayfleet.cluster.supervisor", str(tmp_path / "head.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr
    assert not ran.exists()
