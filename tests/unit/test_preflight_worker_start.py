"""The worker start commands behind `rayfleet up`'s fast worker start (cluster/node_start.py),
run in local bash with a venv whose `ray` is a stand-in (no Ray starts): the autoscaler's updater must not restart a worker that
rayfleet has just started for the same head session, and must restart it otherwise."""

from __future__ import annotations

import os
import site
import subprocess
import time
import venv as venvlib
from pathlib import Path

import pytest

import rayfleet
from rayfleet.cluster.launcher import render, started_mark, worker_start_command
from rayfleet.config.fleet import FleetSpec

pytestmark = pytest.mark.unit

SESSION = "session_2026-01-01_00-00-00_000000_1"


def _venv(tmp_path: Path, ray_script: str) -> Path:
    """A venv (rayfleet and its imports from this one) whose `ray` is ``ray_script``."""
    venv = tmp_path / "venv"
    venvlib.create(venv, symlinks=True)
    (site_dir,) = (venv / "lib").glob("python3.*/site-packages")
    (site_dir / "outer.pth").write_text("\n".join([*site.getsitepackages(), str(Path(rayfleet.__file__).parents[1])]))
    ray = venv / "bin" / "ray"
    ray.write_text("#!/bin/sh\n" + ray_script + "\n")
    ray.chmod(0o755)
    return venv


@pytest.fixture
def fleet(tmp_path) -> FleetSpec:
    venv = _venv(tmp_path, f'echo "$1" >> {tmp_path}/ray-calls')
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


def test_the_node_picks_its_flags_and_environment_from_the_plan(tmp_path):
    """The address the node was reached at (SSH_CONNECTION) selects its resources; ports, the head's
    address, Ray's environment and "~/" paths reach `ray start` as the plan says."""
    log = tmp_path / "ray-args"
    venv = _venv(tmp_path, f'echo "$* | $RAY_TMPDIR $RAY_AUTH_TOKEN_PATH $PATH" >> {log}')
    fleet = FleetSpec.model_validate(dict(
        name="t", head={"host": "127.0.0.77"}, python=str(venv), ssh={"user": "root", "key": "/k"},
        workers=[{"host": "127.0.0.78", "resources": {"num_cpus": 3, "custom": {"disk": 1}}}],
        temp_dir=str(tmp_path / "tmp"), ports={"gcs": 16399}))
    env = {**os.environ, "SSH_CONNECTION": "127.0.0.1 50000 127.0.0.78 22", "HOME": str(tmp_path)}
    from rayfleet.cluster.launcher import start_command
    r = subprocess.run(["bash", "-c", start_command(fleet, "updater")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    stop, start = log.read_text().splitlines()
    args, environment = start.split(" | ")
    assert stop.startswith("stop --force |")
    assert args.startswith("start --address=127.0.0.77:16399 --node-ip-address=127.0.0.78 --node-manager-port=")
    assert args.endswith('--num-cpus=3 --resources={"disk": 1.0}')
    assert environment.startswith(f"{fleet.temp_dir} {tmp_path}/.rayfleet/t/auth_token {venv}/bin:")
    r = subprocess.run(["bash", "-c", start_command(fleet, "head")], env=env, capture_output=True, text=True)
    head = log.read_text().splitlines()[-1].split(" | ")[0]
    assert head.startswith("start --head --port=16399 --dashboard-host=127.0.0.1 ")   # the head's loopback: reached through SSH
    assert f"--autoscaling-config={tmp_path}/ray_bootstrap_config.yaml" in head
