"""A stale local cluster record (after a reboot, or with its session id reused by someone else)
never makes `rayfleet down --local` (or `up --local`, which clears a dead cluster first) kill
unrelated processes: the record's boot id and its session leader's start time must match."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayfleet.cluster import local, processes
from rayfleet.cluster.state import LocalCluster, LocalPorts, save_local_cluster

pytestmark = pytest.mark.unit


@pytest.fixture
def unrelated():
    """A live process leading its own session, as a user's shell or daemon would."""
    p = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def _record(directory: Path, session: int, boot: str, leader_start: int) -> None:
    save_local_cluster(LocalCluster(cluster_id="0123456789ab", host="127.0.0.1", ports=LocalPorts(), num_cpus=None,
                                    pgid=session, temp_dir=str(directory / "ray"), token_path=str(directory / "t"),
                                    boot_id=boot, leader_start=leader_start), directory)


def _cli_down(directory: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "rayfleet"
    return subprocess.run([str(exe), "down", "--local"], env={**os.environ, "RAYFLEET_HOME": str(directory)},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["session id reused", "record from another boot"])
def test_a_stale_record_never_stops_an_unrelated_session(tmp_path, unrelated, case):
    started = processes.start_time(unrelated.pid)
    if case == "session id reused":   # same boot; the leader we recorded started at another time
        _record(tmp_path, unrelated.pid, processes.boot_id(), started - 1)
    else:                             # the record's boot is over: nothing it names can run now
        _record(tmp_path, unrelated.pid, "00000000-0000-0000-0000-000000000000", started)
    r = _cli_down(tmp_path)
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)
    assert unrelated.poll() is None, f"down --local stopped an unrelated process ({case})"
    assert not (tmp_path / "local.json").exists()   # forgotten
    _record(tmp_path, unrelated.pid, processes.boot_id(), started - 1)
    assert local._running_or_cleared(tmp_path) is None      # what up --local does with a dead record
    assert unrelated.poll() is None


def test_the_record_of_a_session_still_matches_it(tmp_path, unrelated):
    # The control: the same record with the right boot and start time names that session.
    session = processes.Session.of(unrelated.pid)
    assert session.is_ours() and processes.cluster_pids("0123456789ab", session) == [unrelated.pid]
    _record(tmp_path, unrelated.pid, session.boot, session.leader_start)
    assert local.stop(tmp_path) is not None
    assert unrelated.wait(timeout=30) is not None
