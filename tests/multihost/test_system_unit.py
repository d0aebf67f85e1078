"""The head's supervisor as a *system* unit, under a real PID-1 systemd: a fleet whose SSH user is root gets
``/etc/systemd/system/rayfleet-head-NAME.service``, wanted by multi-user.target. The head is a lab machine
(rayfleet.testing.machines: systemd is its PID 1, with a root of its own that outlives its reboots); rayfleet
reaches it over SSH as root. (The user unit, under a real ``systemd --user``, is in test_fleet.py.)

Only the machine's own address (10.213.12.0/24, on a bridge this module creates) is contacted."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, rayfleet_cli
from rayfleet.errors import ClusterNotRunning
from rayfleet.testing.hosts import lab_supported

pytestmark = pytest.mark.multihost

VENV = str(Path(os.sys.executable).parent.parent)
UNIT = "rayfleet-head-sys.service"


@pytest.fixture(scope="module")
def machine():
    why = lab_supported()
    if why:
        pytest.fail(f"multi-host tests can't run here: {why} (./test installs what they need, as root)")
    if not Path("/lib/systemd/systemd").exists():
        pytest.fail("systemd is missing (apt-get install systemd)")
    from rayfleet.testing.machines import MachineLab

    work = Path(tempfile.mkdtemp(prefix="rfmachine-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    t0 = time.monotonic()
    try:
        with MachineLab(1, work / "hosts", keep=[str(ROOT), VENV]) as lab:
            print(f"[multihost] a machine booted (systemd as PID 1): {time.monotonic() - t0:.1f} s")
            yield lab
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.5)


def test_root_gets_a_system_unit_that_restarts_the_head_and_starts_it_at_boot(machine, tmp_path):
    """As root on a machine that runs systemd: `up` installs and enables a system unit (wanted by
    multi-user.target) and says so; the supervisor SIGKILLed → systemd starts it again, and it the head; the
    machine rebooted (`systemctl reboot`: every unit stopped, then a boot) → the enabled unit starts the head
    at boot; `status` tells each time; `down` disables and removes the
    unit."""
    from rayfleet.cluster import fleet as fl
    from rayfleet.config.fleet import FleetSpec
    from rayfleet.config.loader import load_model

    m = machine.hosts[0]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({
        "name": "sys", "head": {"host": m.ip}, "ssh": {"user": "root", "key": str(machine.key)},
        "python": VENV, "resources": {"num_cpus": 1, "object_store_memory": 100 * 2**20}}))
    spec = load_model(FleetSpec, fleet)
    head_dir = m.root / ".rayfleet" / "sys" / "head"
    restarts = head_dir / "restarts.json"
    r = rayfleet_cli("check", "-f", str(fleet), "--accept-new-hosts", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(fleet), timeout=600)
    print(f"[multihost] up (head only, a system unit): {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        said = f"systemd, system unit {UNIT}: starts the head again when it dies, and at boot"
        r = rayfleet_cli("status", "-f", str(fleet))
        assert f"Head supervisor: {said}" in r.stdout, r.stdout + r.stderr
        assert (m.machine_root / "etc/systemd/system" / UNIT).is_file()
        assert m.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
        assert m.systemctl("is-active", UNIT).stdout.strip() == "active"
        wanted = m.systemctl("show", "--property=WantedBy", "--value", UNIT).stdout.split()
        assert "multi-user.target" in wanted, wanted

        def head_node() -> str:
            try:
                alive = [n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE" and n["node_ip"] == m.ip]
            except ClusterNotRunning:   # the dashboard is not up yet
                return ""
            return alive[0] if alive else ""

        assert head_node()

        def count() -> int:
            return json.loads(restarts.read_text())["count"] if restarts.exists() else 0

        def back(since: int, t0: float, what: str) -> None:
            _wait_until(lambda: count() > since, 180, f"the head started again ({what})")
            _wait_until(head_node, 120, f"the head ALIVE ({what})")   # (a new raylet: a new node id)
            last = json.loads(restarts.read_text())["history"][-1]
            print(f"[multihost] system unit: the head back ({what}; the supervisor says: {last['reason']}): "
                  f"{time.monotonic() - t0:.1f} s")
            r = rayfleet_cli("status", "-f", str(fleet))
            assert re.search(rf"^Head: restarted {count()} time\(s\); last at .* \({re.escape(last['reason'])}\), "
                             r"back in \d+ s( \(at the \d+\w\w try of ray start\))?$", r.stdout, re.M), r.stdout + r.stderr
            assert "does not answer" not in r.stdout + r.stderr, r.stdout + r.stderr

        # The supervisor SIGKILLed: systemd starts it again (Restart=on-failure), the head's Ray goes with it
        # (KillMode=mixed) and the new supervisor starts it on the same store.
        pid = m.systemctl("show", "--property=MainPID", "--value", UNIT).stdout.strip()
        assert pid.isdigit() and pid != "0"
        since, t0 = count(), time.monotonic()
        m.exec(f"kill -9 {pid}")
        back(since, t0, "supervisor SIGKILLed")
        assert json.loads(restarts.read_text())["history"][-1]["reason"] == "its supervisor was started again by systemd"
        assert m.systemctl("show", "--property=MainPID", "--value", UNIT).stdout.strip() not in (pid, "0")

        # A reboot: systemd stops every unit (the head's too), the machine boots, multi-user.target starts it.
        since, t0 = count(), time.monotonic()
        m.reboot()
        assert m.booted == 2
        back(since, t0, "the machine rebooted")
        assert m.systemctl("is-active", UNIT).stdout.strip() == "active"
    finally:
        r = rayfleet_cli("down", "-f", str(fleet), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (m.machine_root / "etc/systemd/system" / UNIT).exists()
    assert m.systemctl("is-enabled", UNIT).returncode != 0
    assert m.exec("pgrep -f 'ray/core/src/ray/gcs|raylet/raylet|rayfleet.cluster.supervisor'").stdout == ""
