"""The worker start commands behind `rayfleet up`'s fast worker start, run in local bash
with a stand-in `ray` (no Ray): the autoscaler's updater must not restart a worker that
rayfleet has just started for the same head session, and must restart it otherwise."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from rayfleet.cluster.launcher import render, started_mark, worker_start_command
from rayfleet.config.fleet import FleetSpec

pytestmark = pytest.mark.unit

SESSION = "session_2026-01-01_00-00-00_000000_1"


@pytest.fixture
def fleet(tmp_path) -> FleetSpec:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    ray = venv / "bin" / "ray"
    ray.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/ray-calls\n')
    ray.chmod(0o755)
    # A head address nothing real uses, so no real raylet on this machine can match.
    return FleetSpec.model_validate(dict(
        name="t", head={"host": "127.0.0.77"}, workers=[{"host": "127.0.0.78"}], python=str(venv),
        ssh={"user": "root", "key": "/k"}, temp_dir=str(tmp_path / "tmp"), ports={"gcs": 16399}))


def _calls(tmp_path) -> list[str]:
    f = tmp_path / "ray-calls"
    return f.read_text().split() if f.exists() else []


def _bash(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)


def _posing_as(args: str, timeout_s: float = 10) -> subprocess.Popen:
    """A process whose command line is ``args``; returns once pgrep can see it so (bash has
    exec'd sleep under that name), and not later than ``timeout_s``."""
    p = subprocess.Popen(["bash", "-c", f'exec -a "{args}" sleep 60'])
    cmdline = Path(f"/proc/{p.pid}/cmdline")
    deadline = time.monotonic() + timeout_s
    while not cmdline.read_bytes().startswith(args.encode() + b"\0"):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError(f"no process posing as {args!r} within {timeout_s} s "
                                 f"(exit status {p.returncode})")
        time.sleep(0.01)
    return p


@pytest.fixture
def fake_raylet(fleet):
    """A process whose command line looks like a raylet of this head and session."""
    args = f"/x/raylet/raylet --gcs-address={fleet.head.host}:{fleet.ports.gcs} --session-name={SESSION} --y=1"
    p = _posing_as(args)
    yield p
    p.kill()
    p.wait()


def _updater_command(fleet) -> str:
    (cmd,) = render(fleet, Path("/tok"))["worker_start_ray_commands"]
    return cmd


def test_updater_skips_a_worker_rayfleet_just_started(fleet, tmp_path, fake_raylet):
    Path(fleet.temp_dir).mkdir(parents=True)
    mark = Path(started_mark(fleet))
    mark.write_text(SESSION + "\n")
    r = _bash(_updater_command(fleet))
    assert r.returncode == 0, r.stderr
    assert "not restarting it" in r.stdout
    assert _calls(tmp_path) == []
    assert not mark.exists()  # one-shot: the next updater (recovery, config change) restarts
    r = _bash(_updater_command(fleet))
    assert _calls(tmp_path) == ["stop", "start"]


def test_updater_restarts_without_a_mark_or_with_a_stale_one(fleet, tmp_path, fake_raylet):
    r = _bash(_updater_command(fleet))
    assert r.returncode == 0, r.stderr
    assert _calls(tmp_path) == ["stop", "start"]
    mark = Path(started_mark(fleet))
    mark.write_text(SESSION + "\n")
    old = time.time() - 3600
    os.utime(mark, (old, old))
    _bash(_updater_command(fleet))
    assert _calls(tmp_path) == ["stop", "start", "stop", "start"]
    assert not mark.exists()


def test_updater_restarts_when_the_mark_is_for_another_session(fleet, tmp_path, fake_raylet):
    Path(fleet.temp_dir).mkdir(parents=True)
    Path(started_mark(fleet)).write_text("session_2025-01-01_00-00-00_000000_9\n")
    _bash(_updater_command(fleet))
    assert _calls(tmp_path) == ["stop", "start"]


def test_rayfleet_start_writes_the_mark_and_leaves_a_running_session_alone(fleet, tmp_path):
    # 'ray stop' only where some Ray runs (on this test machine, maybe another test's).
    ray_here = _bash("pgrep -f '[r]aylet|[g]cs_server|[r]ay::' >/dev/null").returncode == 0
    r = _bash(worker_start_command(fleet, SESSION))
    assert r.returncode == 0, r.stderr
    assert _calls(tmp_path) == (["stop", "start"] if ray_here else ["start"])
    assert Path(started_mark(fleet)).read_text().strip() == SESSION
    args = f"/x/raylet/raylet --gcs-address={fleet.head.host}:{fleet.ports.gcs} --session-name={SESSION}"
    p = _posing_as(args)
    try:
        r = _bash(worker_start_command(fleet, SESSION))
        assert "already runs here" in r.stdout
        first = _calls(tmp_path)
        assert first[-1] == "start"
        r = _bash(worker_start_command(fleet, "session_2099-01-01_00-00-00_000000_2"))  # a newer head
        assert _calls(tmp_path) == first + ["stop", "start"]
    finally:
        p.kill()
        p.wait()


def test_session_name_is_validated(fleet):
    with pytest.raises(ValueError):
        worker_start_command(fleet, "session_x; rm -rf /")
