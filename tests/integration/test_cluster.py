"""The local cluster: token auth, idempotent up, isolation, and a clean down."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import OTHER_PORTS, ROOT, SESSION_PORTS, rayfleet_cli, up_flags
from rayfleet.cluster import local, monitoring, processes

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
    """Another RAYFLEET_HOME + ports: both run; stopping the second leaves the first untouched. The second
    runs Prometheus from the start (--monitoring); its down stops that too."""
    env = {"RAYFLEET_HOME": str(tmp_path / "other")}
    prom_port = OTHER_PORTS["gcs"] - 5
    r = rayfleet_cli("up", "--local", "--num-cpus", "1", "--monitoring", "--prometheus-port", str(prom_port),
                     *up_flags(OTHER_PORTS), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"  prometheus: http://127.0.0.1:{prom_port} (keeps 7d)" in r.stdout
    other = local.current(Path(env["RAYFLEET_HOME"]))
    prom_pid = monitoring.running(local.monitoring_dir(Path(env["RAYFLEET_HOME"])))
    assert prom_pid and requests.get(f"http://127.0.0.1:{prom_port}/-/ready", timeout=10).status_code == 200
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
    assert not processes.is_running(prom_pid)
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


def _by_name(cluster, name: str) -> list[int]:
    def comm(p: int) -> str:
        try:
            return Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:   # ended since it was listed (a worker going away)
            return ""
    return [p for p in local.pids(cluster) if comm(p) == name]


def test_killed_head_comes_back_by_itself_with_its_service_and_its_job_fails_with_the_reason(tiny_model, tmp_path):
    """Head recovery, on by default for `up --local` (a 2-CPU cluster, the CLI as a user runs it): SIGKILL the
    GCS server; the supervisor starts the head again on its RocksDB store, the service answers again with
    nothing redeployed, the jobs that were running are FAILED with the reason (their followers say so and exit
    1), `status` shows the restart; its first `ray start` fails (the test holds the GCS port meanwhile, as a
    start that times out on a loaded machine fails): tried again, one restart, the jobs' reason is still why the
    head went down, the failed try's own output in the supervisor's log; the training job resumes from its
    checkpoint with `train --resume` and registers one version; `down` removes the store."""
    home = tmp_path / "home"
    env = {"RAYFLEET_HOME": str(home)}
    r = rayfleet_cli("up", "--local", "--num-cpus", "2", *up_flags(OTHER_PORTS), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"head:       supervised; state kept in {home / 'gcs-store'} (RocksDB)" in r.stdout
    cluster = local.current(home)
    try:
        r = rayfleet_cli("serve", "--model", str(tiny_model), env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        url = f"{cluster.serve_url}/translate"
        before = requests.post(url, json={"text": "The cat sleeps."}, timeout=30)
        assert before.status_code == 200
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        (job_dir / "ticks.py").write_text("import time\nfor i in range(600):\n    print('tick', i, flush=True)\n"
                                          "    time.sleep(0.5)\n")
        job = subprocess.Popen([str(Path(sys.executable).parent / "rayfleet"), "submit", "--working-dir",
                                str(job_dir), "--", "python", "ticks.py"], env=dict(os.environ, **env),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in job.stdout:
            if line.startswith("tick 3"):
                break
        # A training job too, killed after its first checkpoint, then resumed from it.
        spec = tmp_path / "train.yaml"
        spec.write_text((ROOT / "examples" / "finetune-tiny.yaml").read_text()
                        .replace("name: en-fr-tiny", "name: en-fr-resume").replace("max_steps: 500", "max_steps: 100")
                        .replace("checkpoints:\n  every_steps: 100", "checkpoints:\n  every_steps: 50")
                        .replace("model_name: en-fr-tiny", "model_name: en-fr-resume"))
        train = subprocess.Popen([str(Path(sys.executable).parent / "rayfleet"), "train", str(spec)],
                                 env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in train.stdout:
            if m := re.match(r"Submitted job (\S+) \(run dir (\S+)\)\.", line):
                run_id, run_dir = m[1], Path(m[2])
                break
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint_manager_snapshot.json").exists():   # Ray Train's record of its checkpoints
            assert time.monotonic() < deadline and train.poll() is None, "no checkpoint within 300 s"
            time.sleep(0.2)
        (gcs,) = _by_name(cluster, "gcs_server")
        os.kill(gcs, signal.SIGKILL)
        killed = time.monotonic()
        holder = socket.socket()   # the GCS port taken before the supervisor's first try: that try fails
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # (its clients' connections in TIME_WAIT)
        while True:
            try:
                holder.bind(("0.0.0.0", OTHER_PORTS["gcs"]))
                break
            except OSError:   # the killed GCS still has it for a moment
                assert time.monotonic() - killed < 2, "the killed GCS server's port stayed taken"
        holder.listen()
        try:
            while not local.head_restarts(home)["history"]:   # the first try, failed
                assert time.monotonic() - killed < 180, "no try to start the head again within 180 s"
                time.sleep(0.2)
        finally:
            holder.close()
        assert local.head_restarts(home)["history"][0]["ok"] is False
        print(f"GCS server killed; the first try to start the head again failed {time.monotonic() - killed:.1f} s later")
        while not local.head_restarts(home)["history"][0]["ok"]:   # the supervisor's next try
            assert time.monotonic() - killed < 240, "the head was not started again within 240 s"
            time.sleep(0.2)
        print(f"the head started again {time.monotonic() - killed:.1f} s after the kill")
        while True:
            try:
                again = requests.post(url, json={"text": "The cat sleeps."}, timeout=5)
                if again.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() - killed < 240, "the service did not come back within 240 s"
            time.sleep(0.2)
        print(f"the service answered again {time.monotonic() - killed:.1f} s after the kill")
        assert again.json() == before.json()
        rest, _ = job.communicate(timeout=180)
        print(rest)
        assert job.returncode == 1
        assert re.search(r"^error: job \S+ FAILED: head restarted at [\d-]+ [\d:]+ \(gcs_server died(, raylet died)?\): "
                         r"the job's driver ran on the head and stopped with it\.", rest, re.M), rest
        assert _by_name(cluster, "gcs_server") != [gcs]
        r = rayfleet_cli("status", env=env)
        assert r.returncode == 0, r.stderr
        restarts = local.head_restarts(home)
        first = restarts["history"][0]
        assert re.fullmatch(r"gcs_server died(, raylet died)?", first["reason"]) and first["tries"] == 2, restarts
        # A second time the head went down after it was back (not seen since the tries of one restart count
        # as one) is allowed: status then tells the later restart as the last.
        last = re.escape(restarts["history"][-1]["reason"])
        assert re.search(rf"^Head: restarted {restarts['count']} time\(s\); last at .* \({last}\), back in \d+ s"
                         r"( \(at the \d+\w\w try of ray start\))?$", r.stdout, re.M), r.stdout
        if restarts["count"] == 1:
            assert re.search(r"^Head: restarted 1 time\(s\); .*, back in \d+ s \(at the 2nd try of ray start\)$",
                             r.stdout, re.M), r.stdout
        else:
            print(f"the head restarted {restarts['count']} times: {restarts['history']}")
        assert "earlier incarnation(s) of restarted nodes not shown" in r.stdout
        # why it died, as the dead process wrote it, is in the supervisor's log
        log = (home / "supervisor.log").read_text()
        assert re.search(r"the last lines of gcs_server\.out:\n(  .*\n)*  \[.*\(gcs_server\) ", log), log
        # and what the failed try of `ray start` said (the GCS could not have its port)
        assert re.search(r"ray start --head failed \(exit 1\) after [\d.]+ s; its last lines .*:\n(  .*\n)*  .*"
                         r"Failed to start GCS", log), log
        deadline = time.monotonic() + 120   # Serve's controller, itself restarted, catches up with its replicas
        while not re.search(r"translator .*RUNNING .* 1 ", (r := rayfleet_cli("services", env=env)).stdout):
            assert time.monotonic() < deadline, r.stdout
            time.sleep(1)
        print(f"the service RUNNING again {time.monotonic() - killed:.1f} s after the kill")
        r = rayfleet_cli("jobs", env=env)
        assert re.search(r"ticks .*FAILED", r.stdout), r.stdout

        out, _ = train.communicate(timeout=180)
        print(out)
        assert train.returncode == 1
        assert re.search(rf"^error: Job {run_id} ended FAILED: head restarted at .* \(gcs_server died\)", out, re.M), out
        t0 = time.monotonic()
        r = rayfleet_cli("train", str(spec), "--resume", run_id, env=env, timeout=600)
        print(f"$ rayfleet train --resume {run_id} ({time.monotonic() - t0:.0f} s)\n{r.stdout}{r.stderr}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"Resuming run {run_id} from its latest checkpoint." in r.stdout
        step = int(re.search(r"^Resuming from the run's checkpoint at step (\d+)\.$", r.stdout, re.M)[1])
        assert step >= 50 and step % 50 == 0
        assert "Registered en-fr-resume version 1 (alias staging): registry://en-fr-resume/1" in r.stdout
        r = rayfleet_cli("models", "--name", "en-fr-resume", env=env)
        assert r.returncode == 0 and "registry://en-fr-resume/1" in r.stdout and "en-fr-resume/2" not in r.stdout, \
            r.stdout + r.stderr
    finally:
        r = rayfleet_cli("down", "--local", env=env)
    assert r.returncode == 0 and "no Ray process of it is left" in r.stdout, r.stdout + r.stderr
    assert local.pids(cluster) == [] and not (home / "gcs-store").exists()
