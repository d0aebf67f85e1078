"""The local cluster: token auth, idempotent up, isolation, and a clean down."""

from __future__ import annotations

import ipaddress
import os
import stat
import time
from pathlib import Path

import pytest
import requests

from conftest import OTHER_PORTS, SESSION_PORTS, rayfleet_cli, up_flags
from rayfleet.cluster import local, processes

pytestmark = pytest.mark.integration


def test_token_file_is_private(local_cluster):
    assert stat.S_IMODE(os.stat(local_cluster.token_path).st_mode) == 0o600


def _listeners(port: int) -> dict[str, set[int]]:
    """Address -> socket inodes of the TCP sockets listening on ``port`` in this network
    namespace, IPv4 and IPv6, as the kernel lists them (/proc/net/tcp, /proc/net/tcp6)."""
    found: dict[str, set[int]] = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            addr_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr_hex)  # 32-bit words in host (little-endian) order
            addr = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
            found.setdefault(str(addr), set()).add(int(fields[9]))
    return found


def _socket_inodes(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:["):-1]))
    return inodes


def test_dashboard_bound_to_loopback(local_cluster):
    """The sockets the kernel has, not the URL we print: 127.0.0.1 only (no 0.0.0.0, no ::),
    and held by a process of this cluster."""
    port = SESSION_PORTS["dashboard"]
    assert local_cluster.dashboard_url == f"http://127.0.0.1:{port}"
    listeners = _listeners(port)
    assert list(listeners) == ["127.0.0.1"], listeners
    assert listeners["127.0.0.1"] <= _socket_inodes(local.pids(local_cluster)), listeners


def test_jobs_api_refuses_requests_without_the_token(local_cluster):
    url = f"{local_cluster.dashboard_url}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.post(url, json={"entrypoint": "echo pwned"}, timeout=10).status_code == 401
    bad = {"Authorization": "Bearer " + "0" * 64}
    assert requests.get(url, headers=bad, timeout=10).status_code == 403
    assert requests.get(url, headers=local.auth_headers(local_cluster), timeout=10).status_code == 200


def test_job_with_the_token_runs(local_cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(local_cluster.dashboard_url, headers=local.auth_headers(local_cluster))
    job = client.submit_job(entrypoint="python -c \"import ray; ray.init(); "
                                       "print('cpus', ray.cluster_resources()['CPU'])\"")
    deadline = time.monotonic() + 180
    while (st := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(1)
    assert st == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert "cpus 5.0" in client.get_job_logs(job)


def _core(pids: list[int]) -> set[int]:
    """The cluster's GCS and raylet (worker processes come and go on their own)."""
    core = set()
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith((b"gcs_server", b"raylet")):
            core.add(pid)
    return core


def test_up_again_is_harmless(local_cluster):
    before = _core(local.pids(local_cluster))
    assert len(before) == 2
    r = rayfleet_cli("up", "--local", *up_flags(SESSION_PORTS))
    assert r.returncode == 0, r.stderr
    assert "Cluster already running." in r.stdout
    assert local.current().cluster_id == local_cluster.cluster_id
    assert _core(local.pids(local_cluster)) == before


def test_status_shows_node_and_services(local_cluster, translator):
    r = rayfleet_cli("status")
    assert r.returncode == 0, r.stderr
    assert f"Local cluster 127.0.0.1:{SESSION_PORTS['gcs']}" in r.stdout
    assert "ALIVE" in r.stdout and "(head)" in r.stdout
    assert "translator" in r.stdout and "RUNNING" in r.stdout


def test_second_cluster_is_isolated_and_down_leaves_nothing(local_cluster, tmp_path):
    """Another RAYFLEET_HOME + ports: both run; stopping the second leaves the first untouched."""
    env = {"RAYFLEET_HOME": str(tmp_path / "other")}
    r = rayfleet_cli("up", "--local", "--num-cpus", "1", *up_flags(OTHER_PORTS), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    other = local.current(Path(env["RAYFLEET_HOME"]))
    assert other.cluster_id != local_cluster.cluster_id
    other_pids = local.pids(other)
    mine = local.pids(local_cluster)
    assert other_pids and not set(other_pids) & set(mine)
    # Each cluster's token opens only its own dashboard.
    assert requests.get(f"{other.dashboard_url}/api/jobs/", headers=local.auth_headers(local_cluster),
                        timeout=10).status_code == 403

    t0 = time.monotonic()
    r = rayfleet_cli("down", "--local", env=env)
    assert r.returncode == 0, r.stderr
    print(f"down took {time.monotonic() - t0:.1f} s")
    assert "no Ray process of it is left" in r.stdout
    assert not [p for p in other_pids if processes.is_running(p)]
    assert local.pids(other) == []
    assert all(processes.is_running(p) for p in mine)
    assert local.is_alive(local_cluster)
    # down again: nothing to do, not an error
    r = rayfleet_cli("down", "--local", env=env)
    assert r.returncode == 0 and "No local cluster is running" in r.stdout


def test_port_in_use_is_a_clear_error(local_cluster, tmp_path):
    ports = dict(OTHER_PORTS, gcs=SESSION_PORTS["gcs"])
    r = rayfleet_cli("up", "--local", *up_flags(ports), env={"RAYFLEET_HOME": str(tmp_path / "x")})
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: Port {SESSION_PORTS['gcs']} (the gcs port) is already in use on this machine.",
        "hint: Stop what uses it, or pick another port with --port N.",
    ]
