"""A real 3-host cluster over SSH: hosts are network + PID + mount namespaces with their own sshd.

Order matters (module-scoped lab): check (good, then broken one thing at a time),
up, work on every node, training across nodes + a service of the registered version,
the translator, a worker's raylet killed, down, autoscaling.
Only the hosts' own addresses (10.213.7.0/24 on a bridge this test creates) are contacted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import requests
import yaml

from conftest import ARTIFACTS, ROOT, rayfleet_cli
from rayfleet.cluster.serving import haproxy_dir
from rayfleet.errors import ClusterNotRunning
from rayfleet.testing.capture import Capture
from rayfleet.testing.hosts import HostLab, lab_supported

pytestmark = pytest.mark.multihost

VENV = str(Path(os.sys.executable).parent.parent)


def _other_python() -> Path | None:
    """A Python of another minor version than this one, for a node whose python3 is not ours."""
    mine = f"python{os.sys.version_info.major}.{os.sys.version_info.minor}"
    for exe in sorted(Path("/root/.pyenv/versions").glob("3.*/bin/python3.*")) + sorted(Path("/usr/bin").glob("python3.*")):
        if re.fullmatch(r"python3\.\d+", exe.name) and exe.name != mine and exe.is_file():
            return exe
    return None


def _timed(label: str, t0: float) -> None:
    print(f"[multihost] {label}: {time.monotonic() - t0:.1f} s")


@pytest.fixture(scope="module")
def lab():
    why = lab_supported()
    if why:
        pytest.fail(f"multi-host tests can't run here: {why} (./test installs what they need, as root)")
    work = Path(tempfile.mkdtemp(prefix="rflab-", dir="/var/tmp"))
    os.chmod(work, 0o755)   # the fleet's user (not root) reaches the shared storage below it
    (work / "shared").mkdir()
    os.chmod(work / "shared", 0o777)
    try:
        other = _other_python()
        keep = [str(ROOT), VENV] + ([str(other.parent.parent)] if other else [])
        # systemd=True: each host boots its user's systemd manager (lingering on), as real machines do
        with HostLab(3, work / "hosts", keep=keep, systemd=True) as lab:
            # Everything on the lab's LAN from here on, but SSH (encrypted, and the runtime's wheels:
            # GBs): test_no_secret_on_the_wire searches it at the module's end.
            with Capture(lab.bridge, work / "lan.pcap", "not tcp port 22") as cap:
                _WIRE.update(capture=cap, pcap=work / "lan.pcap")
                yield lab
    finally:
        shutil.rmtree(work, ignore_errors=True)


_WIRE: dict = {}


def _fleet(lab, path: Path, *, names: bool = False, user: str | None = None, python: str | None = None,
           **extra) -> Path:
    """A fleet.yaml of the lab's hosts, by address, or by name (``names``: as in /etc/hosts). By default
    as the hosts' unprivileged user, with the runtime rayfleet installs (``python``: a venv of one's own)."""
    host = (lambda h: h.fqdn) if names else (lambda h: h.ip)
    data = {
        "name": extra.pop("name", "lab"),
        "head": {"host": host(lab.hosts[0])},
        "workers": [{"host": host(h)} for h in lab.hosts[1:]],
        "ssh": {"user": user or lab.user, "key": str(lab.key)},
        **({"python": python} if python else {}),
        "resources": {"num_cpus": 1, "object_store_memory": 100 * 2**20},
        "storage": {"path": str(lab.workdir.parent / "shared")},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def fleet_file(lab, tmp_path_factory):
    """The module's fleet: bare hosts (rayfleet installs its runtime, in each host's private home), an
    unprivileged user, and hosts by name (the other fleets of this module use addresses): Ray is told
    their addresses, nodes are matched by address, and what rayfleet prints names them as written."""
    return _fleet(lab, tmp_path_factory.mktemp("fleet") / "fleet.yaml", names=True)


def _check(fleet_file, *flags: str) -> subprocess.CompletedProcess:
    return rayfleet_cli("check", "-f", str(fleet_file), *flags, timeout=180)


def _fail_rows(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("✗ ")]


def test_first_contact_shows_the_host_keys_and_pins_them_only_when_told(lab, fleet_file):
    """First contact, stdout a pipe: every host's key fingerprint printed (the hosts' own), nothing pinned,
    nothing sent, exit 1 with the fix; with --accept-new-hosts the keys are pinned and later runs need no flag."""
    from rayfleet.cluster import fleet as fl

    known = fl.paths(_spec(fleet_file)).known_hosts
    assert not known.exists()
    r = _check(fleet_file)
    print(r.stdout + r.stderr)
    assert r.returncode == 1
    for h in lab.hosts:
        own = subprocess.run(["ssh-keygen", "-lf", str(h.dir / "ssh_host_ed25519_key.pub")], capture_output=True,
                             text=True).stdout.split()[1]
        assert f"New host {h.fqdn} ({h.ip}): SSH key {own} (ED25519)" in r.stdout.splitlines(), r.stdout
    assert "is not pinned yet; nothing was sent to them." in r.stderr and "--accept-new-hosts" in r.stderr
    assert not known.exists() or not known.read_text().strip()
    r = _check(fleet_file, "--accept-new-hosts")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Pinned in {known}." in r.stdout and oct(known.stat().st_mode & 0o777) == "0o600"


def test_check_all_green(lab, fleet_file):
    t0 = time.monotonic()
    r = _check(fleet_file)
    assert "New host" not in r.stdout   # pinned before: no question, no flag
    _timed("check (3 hosts)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All 3 hosts are ready." in r.stdout
    assert _fail_rows(r.stdout) == []
    for h in lab.hosts:  # the hosts as fleet.yaml names them, with the address they resolve to
        assert f"{h.fqdn} ({h.ip})" in r.stdout, r.stdout


def test_check_sshd_down(lab, fleet_file):
    h = lab.hosts[2]
    h.stop_sshd()
    try:
        r = _check(fleet_file)
    finally:
        h.start_sshd()
    assert r.returncode == 1
    assert _fail_rows(r.stdout) == [
        f"✗ {h.fqdn} ssh: ssh: connect to host {h.fqdn} port 22: Connection refused — fix: check that sshd "
        f"runs on {h.fqdn} and accepts the key for {lab.user}"]


def test_check_a_changed_host_key(lab, fleet_file, tmp_path):
    """A host that offers another key than the one pinned at first contact: ✗ with both fingerprints
    and the fix; ssh refuses it, so nothing is sent to it."""
    from rayfleet.cluster import fleet as fl

    h = lab.hosts[2]
    known = fl.paths(_spec(fleet_file)).known_hosts
    assert _check(fleet_file).returncode == 0   # every host's key pinned
    saved = known.read_text()
    fake = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fake)], check=True)
    pub = fake.with_suffix(".pub")
    fake_fp = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True).stdout.split()[1]
    subprocess.run(["ssh-keygen", "-R", h.fqdn, "-f", str(known)], capture_output=True, check=True)
    with known.open("a") as f:
        f.write(h.fqdn + " " + " ".join(pub.read_text().split()[:2]) + "\n")
    try:
        r = _check(fleet_file)
    finally:
        known.write_text(saved)
    assert r.returncode == 1
    (row,) = _fail_rows(r.stdout)
    print(row)
    assert row.startswith(f"✗ {h.fqdn} ssh: its host key changed: known {fake_fp} (ED25519); it offers SHA256:")
    assert f"fix: nothing was sent to it. If {h.fqdn} was reinstalled, forget the old key: ssh-keygen -R {h.fqdn} " \
           f"-f {known}; otherwise someone may be between you and it" in row
    assert _check(fleet_file).returncode == 0   # the pinned key back: green again


def test_check_python3_of_another_minor_version(lab, fleet_file):
    other = _other_python()
    assert other is not None, "this test needs a Python of another minor version on this machine (pyenv)"
    h = lab.hosts[2]
    python3 = os.path.realpath("/usr/bin/python3")   # the nodes' python3, seen by the lab user's PATH
    h.exec(f"mount --bind {other} {python3}", check=True)
    h.root.chmod(0o711)   # that Python lives under the host's /root (bound there): let the lab user reach it
    try:
        r = _check(fleet_file)
    finally:
        h.root.chmod(0o700)
        h.exec(f"umount {python3}", check=True)
    theirs = subprocess.run([str(other), "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    mine = f"{os.sys.version_info.major}.{os.sys.version_info.minor}"
    assert r.returncode == 1
    assert _fail_rows(r.stdout) == [
        f"✗ {h.fqdn} python: python3 is {theirs} here; the runtime is Python {mine} (this machine's) — fix: "
        f"install Python {mine} as python3 on {h.fqdn}, or run rayfleet with Python {theirs.rsplit('.', 1)[0]}"]


def test_check_a_name_that_resolves_differently_on_a_node(lab, fleet_file):
    h, other = lab.hosts[2], lab.hosts[1]
    hosts = lab.workdir / "hosts-elsewhere"
    hosts.write_text(Path("/etc/hosts").read_text().replace(f"{other.ip} {other.fqdn}", f"10.213.7.99 {other.fqdn}"))
    h.exec(f"mount --bind {hosts} /etc/hosts", check=True)   # that node's own /etc/hosts
    try:
        r = _check(fleet_file)
    finally:
        h.exec("umount /etc/hosts", check=True)
    assert r.returncode == 1
    assert _fail_rows(r.stdout) == [
        f"✗ {h.fqdn} names: {other.fqdn} is 10.213.7.99 here, {other.ip} on this machine — fix: make these names "
        f"resolve to the same addresses on {h.fqdn} (DNS or /etc/hosts), or write the addresses in fleet.yaml"]


def test_check_other_ray_version_in_a_venv_of_ones_own_as_root(lab, tmp_path):
    """``python:`` names a venv the nodes have (used as it is); root may still be the fleet's user."""
    fleet_file = _fleet(lab, tmp_path / "own-venv.yaml", names=True, user="root", python=VENV)
    h = lab.hosts[1]
    fake = lab.workdir / "fake-ray"
    fake.write_text("#!/bin/sh\necho 'ray, version 2.59.0'\n")
    fake.chmod(0o755)
    h.exec(f"mount --bind {fake} {VENV}/bin/ray", check=True)
    try:
        r = _check(fleet_file)
    finally:
        h.exec(f"umount {VENV}/bin/ray", check=True)
    assert r.returncode == 1
    assert _fail_rows(r.stdout) == [
        f"✗ {h.fqdn} ray: 2.59.0 here, 2.60.0 on the head — fix: install ray 2.60.0 in {VENV} on {h.fqdn} "
        "(same version everywhere)"]


def test_check_port_taken(lab, fleet_file):
    h = lab.hosts[1]
    code = "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 6380)); s.listen(); time.sleep(300)"
    pid = h.exec(f"{VENV}/bin/python -c \"{code}\" >/tmp/holder.log 2>&1 & echo $!", check=True).stdout.strip()
    try:
        for _ in range(100):  # until it listens (the venv's Python can take a while to start)
            if ":6380 " in h.exec("ss -ltn").stdout:
                break
            assert h.exec(f"kill -0 {pid}").returncode == 0, (
                h.exec("cat /tmp/holder.log; ss -ltnp; ps -ef").stdout)
            time.sleep(0.1)
        r = _check(fleet_file)
    finally:
        h.exec(f"kill {pid}")
    assert r.returncode == 1
    assert _fail_rows(r.stdout) == [
        f"✗ {h.fqdn} ports: taken: node_manager 6380 — fix: stop what uses them (a Ray already running? "
        "'rayfleet down'), or change 'ports:'"]


def test_check_head_recovery_store_not_writable(lab, fleet_file, tmp_path):
    """head_recovery's RocksDB directory is checked on the head only: writable, on a local filesystem."""
    ff = _fleet(lab, tmp_path / "fleet.yaml", names=True, head_recovery={"path": "/proc/rf-gcs"})
    r = _check(ff)
    assert r.returncode == 1
    assert _fail_rows(r.stdout) == [
        f"✗ {lab.hosts[0].fqdn} recovery: RocksDB store /proc/rf-gcs (proc): not writable by {lab.user} — fix: "
        f"make its directory writable by {lab.user}, or set head_recovery.path"]


def test_check_storage_not_shared(lab, fleet_file):
    h = lab.hosts[2]
    storage = lab.workdir.parent / "shared"
    private = lab.workdir / "private-storage"
    private.mkdir(exist_ok=True)
    private.chmod(0o777)   # writable by the fleet's user, like the shared one: only "not shared" is wrong
    h.exec(f"mount --bind {private} {storage}", check=True)
    try:
        r = _check(fleet_file)
    finally:
        h.exec(f"umount {storage}", check=True)
    assert r.returncode == 1
    others = [x.fqdn for x in lab.hosts if x is not h]
    rows = _fail_rows(r.stdout)
    fix = f" — fix: mount the same shared directory (NFS or similar) at {storage} on every node"
    assert rows == [
        f"✗ {others[0]} storage: {storage} is not shared: files written on {h.fqdn} are not seen here{fix}",
        f"✗ {others[1]} storage: {storage} is not shared: files written on {h.fqdn} are not seen here{fix}",
        f"✗ {h.fqdn} storage: {storage} is not shared: files written on {', '.join(others)} are not seen here{fix}",
    ]


def _raylet_pid(host) -> str:
    return host.exec("pgrep -f '[r]aylet/raylet'").stdout.strip()


# Worker raylet PIDs right after `up`: the autoscaler's updater, which gets to the workers
# after rayfleet started them, must not restart them (test_translator_on_the_fleet checks).
_RAYLETS_AFTER_UP: dict[str, str] = {}


_UP_OUTPUT: list[str] = []


@pytest.fixture(scope="module")
def fleet_up(lab, fleet_file):
    """``up`` on bare hosts: rayfleet builds its wheelhouse, installs the runtime on every host, starts Ray."""
    for h in lab.hosts:   # bare: nothing of rayfleet's in the user's home yet
        assert not (h.home(lab.user) / ".rayfleet").exists()
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(fleet_file), "--accept-new-hosts", timeout=900)
    _timed("up on bare hosts (check, wheelhouse, runtime install, to all nodes alive)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout)
    _UP_OUTPUT.append(r.stdout)
    _RAYLETS_AFTER_UP.update({h.ip: _raylet_pid(h) for h in lab.hosts[1:]})
    yield fleet_file
    t0 = time.monotonic()
    r = rayfleet_cli("down", "-f", str(fleet_file), timeout=300)
    _timed("down", t0)
    assert r.returncode == 0, r.stdout + r.stderr


def _spec(fleet_file):
    from rayfleet.config.fleet import FleetSpec
    from rayfleet.config.loader import load_model

    return load_model(FleetSpec, fleet_file)


def _run_job(fleet_file, script: str, timeout: float = 300) -> str:
    """Submit a script as a Ray Job through rayfleet's Jobs client (fleet address + token)."""
    from rayfleet.cluster import fleet as fl
    from rayfleet.jobs.submit import JobsClient

    spec = _spec(fleet_file)
    client = JobsClient(fl.dashboard_url(spec), fl.auth_headers(spec))
    path = lab_shared(fleet_file) / f"job-{time.monotonic_ns()}.py"
    path.write_text(textwrap.dedent(script))
    job = client.submit(f"python {path}", submission_id=f"mh-{time.monotonic_ns()}")
    info = client.wait(job, timeout_s=timeout)
    logs = client.logs(job)
    assert info.status == "SUCCEEDED", logs
    return logs


def lab_shared(fleet_file) -> Path:
    return Path(_spec(fleet_file).storage.path)


def _runtimes(lab, h) -> list[str]:
    """The runtimes installed in a host's private home (as the host sees it: not this machine's files)."""
    out = h.exec(f"cd /home/{lab.user}/.rayfleet/runtime && ls */.rayfleet-runtime").stdout
    return sorted(ln.split("/")[0] for ln in out.split())


def test_up_installed_the_runtime_on_bare_hosts_as_the_unprivileged_user(lab, fleet_up):
    from rayfleet.cluster.runtime import local_lock

    digest = local_lock().digest
    out = _UP_OUTPUT[0]
    for h in lab.hosts:
        assert re.search(rf"{re.escape(h.fqdn)} \({h.ip}\): runtime {digest} installed in \d+ s", out), out
        assert _runtimes(lab, h) == [digest]
        ps = h.exec("ps -eww -o user:20,args | grep '[r]aylet/raylet'").stdout   # Ray runs as that user, from it
        assert ps.startswith(f"{lab.user} ") and f"/home/{lab.user}/.rayfleet/runtime/{digest}/" in ps, ps
    t0 = time.monotonic()
    r = rayfleet_cli("install", "-f", str(fleet_up), timeout=300)
    _timed("install again (nothing to do)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [f"{h.fqdn} ({h.ip}): runtime {digest} already installed" for h in lab.hosts] + [
        f"Runtime ~/.rayfleet/runtime/{digest} is on 3 host(s)."], r.stdout


def test_up_three_nodes_alive_and_status(lab, fleet_up):
    r = rayfleet_cli("status", "-f", str(fleet_up))
    assert r.returncode == 0, r.stderr
    for h in lab.hosts:
        assert h.ip in r.stdout
    assert r.stdout.count("ALIVE") == 3
    # The head's supervisor is a systemd user unit: the hosts run the user's manager, and the user lingers.
    unit = "rayfleet-head-lab.service"
    said = f"systemd, user unit {unit}: starts the head again when it dies, and at boot"
    assert f"\n  supervisor: {said}\n" in _UP_OUTPUT[0], _UP_OUTPUT[0]
    assert f"\nHead supervisor: {said}\n" in r.stdout, r.stdout
    head = lab.hosts[0]
    assert head.user_systemctl("is-enabled", unit).stdout.strip() == "enabled"
    main_pid = head.user_systemctl("show", "--property=MainPID", "--value", unit).stdout.strip()
    assert main_pid == (_head_dir(lab) / "supervisor.pid").read_text().strip()
    # idempotent: an unchanged second up changes nothing
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(fleet_up), "--accept-new-hosts", "--skip-check", timeout=300)
    _timed("second up (unchanged)", t0)
    assert r.returncode == 0, r.stderr
    assert "3 node(s) alive" in r.stdout


def test_exec_logs_and_export(lab, fleet_up):
    worker = lab.hosts[1]
    r = rayfleet_cli("exec", worker.ip, "-f", str(fleet_up), "--", "ip", "-4", "-o", "addr", "show")
    assert r.returncode == 0, r.stderr
    assert worker.ip in r.stdout and lab.hosts[0].ip not in r.stdout
    r = rayfleet_cli("exec", worker.ip, "-f", str(fleet_up), "--", "false")
    assert r.returncode == 1
    # Several words: exactly these arguments; one word: a command line for the node's shell.
    r = rayfleet_cli("exec", worker.ip, "-f", str(fleet_up), "--", "printf", "%s\\n", "a b", "c;d")
    assert (r.returncode, r.stdout) == (0, "a b\nc;d\n"), r.stderr
    r = rayfleet_cli("exec", worker.ip, "-f", str(fleet_up), "--", "echo one; echo two | tr t T")
    assert (r.returncode, r.stdout) == (0, "one\nTwo\n"), r.stderr
    r = rayfleet_cli("logs", worker.ip, "-n", "5", "-f", str(fleet_up))
    assert r.returncode == 0 and "==> raylet.out <==" in r.stdout
    r = rayfleet_cli("export-ray-config", "-f", str(fleet_up))
    cfg = yaml.safe_load(r.stdout)
    assert cfg["provider"] == {"type": "local", "head_ip": lab.hosts[0].ip,
                               "worker_ips": [h.ip for h in lab.hosts[1:]]}
    r = rayfleet_cli("exec", "10.213.7.99", "-f", str(fleet_up), "--", "true")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "error: Host '10.213.7.99' is not in fleet 'lab'."


def test_tasks_land_on_every_node(lab, fleet_up):
    logs = _run_job(fleet_up, """
        import ray, time
        ray.init()
        @ray.remote(num_cpus=1)
        def where():
            time.sleep(1)
            return ray.util.get_node_ip_address()
        ips = ray.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(9)])
        print("IPS", ",".join(sorted(set(ips))))
    """)
    line = next(ln for ln in logs.splitlines() if ln.startswith("IPS "))
    assert line.split()[1].split(",") == sorted(h.ip for h in lab.hosts)


def test_jobs_api_is_on_the_heads_loopback_and_wants_the_token(lab, fleet_up):
    """The dashboard / Jobs API listens on the head's loopback only (rayfleet's commands reach it through an
    SSH tunnel): from the LAN the port is closed; on the head, a request without the token gets 401."""
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{lab.hosts[0].ip}:8265/api/jobs/", timeout=10)
    ask = ("python3 -c \"import urllib.request as u, sys\ntry: u.urlopen('http://127.0.0.1:8265/api/jobs/', timeout=5)\n"
           "except Exception as e: print(getattr(e, 'code', type(e).__name__))\"")
    assert lab.hosts[0].exec(ask).stdout.strip() == "401"
    from rayfleet.cluster import fleet as fl

    assert fl.dashboard_url(_spec(fleet_up)).startswith("http://127.0.0.1:")   # this process's tunnel


FLEET_MODEL = "en-fr-fleet"


TRAIN_STEPS = 30


def _fleet_job(path: Path) -> Path:
    """examples/finetune-tiny.yaml with 2 workers, shortened to 30 steps (what this test checks is where
    things run and land, not how well it learns: the quick start and tests/integration/test_train.py train
    to exact match), evaluated and checkpointed once at the end, no storage_path; its synthetic
    corpus written here as data files beside the job (in this machine's private /tmp: the nodes can't see them)."""
    from rayfleet.train.corpus import write_corpus

    spec = yaml.safe_load((ROOT / "examples" / "finetune-tiny.yaml").read_text())
    spec.pop("search", None)
    synthetic = spec["data"].pop("synthetic")
    files = write_corpus(path.parent / "data", seed=synthetic["seed"], train_size=synthetic["train_size"],
                         validation_size=synthetic["validation_size"])
    spec["data"].update(train="data/train.tsv", validation="data/validation.tsv")   # relative to the job file
    assert files.train == path.parent / "data" / "train.tsv"
    spec.update(name="fleet-tiny", eval={"every_steps": TRAIN_STEPS},
                checkpoints={"every_steps": TRAIN_STEPS, "keep": 1},
                register={"model_name": FLEET_MODEL, "alias": "staging"})
    spec["training"]["max_steps"] = TRAIN_STEPS
    spec["scaling"]["num_workers"] = 2  # DDP across nodes: not 'auto' (the example's), which sizes to free CPUs
    assert "storage_path" not in spec
    path.write_text(yaml.safe_dump(spec))
    return path


def test_train_across_nodes_register_and_serve_from_shared_storage(lab, fleet_up, tmp_path):
    """`rayfleet train -f`: DDP over 2 nodes, run dir, checkpoints and registry on the fleet's storage;
    then `registry://NAME@ALIAS` served on the fleet translates held-out sentences exactly as the registered
    files do in this process (the replica loaded that version, from the share)."""
    shared, head = lab_shared(fleet_up), lab.hosts[0].ip
    assert lab.hosts[1].exec(f"test -e {tmp_path}").returncode == 1  # the nodes can't see the data files
    t0 = time.monotonic()
    r = rayfleet_cli("train", str(_fleet_job(tmp_path / "job.yaml")), "-f", str(fleet_up), "--quiet",
                     timeout=900)
    _timed(f"train on the fleet (2 DDP workers, {TRAIN_STEPS} steps, registration included)", t0)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    shipped = sorted(p.name for p in (shared / "data").iterdir())   # the data files, copied there by content
    assert [re.sub(r"-[0-9a-f]{12}\.", "-HASH.", n) for n in shipped] == ["train-HASH.tsv", "validation-HASH.tsv"]
    run_dir = Path(re.search(r"\(run dir (\S+)\)\.", r.stdout)[1])
    assert run_dir.parent == shared / "runs"
    # 1 CPU per node: the two workers can't share a node; gloo ran between namespaces
    m = re.search(r"Training with 2 worker\(s\) on (\d) node\(s\): (.+)", r.stdout)
    assert m and int(m[1]) >= 2 and set(m[2].split(", ")) <= {h.ip for h in lab.hosts}, r.stdout
    assert re.search(r"Evaluation: exact_match [0-9.]+", r.stdout), r.stdout  # evaluated on the workers
    version = re.search(rf"Registered {FLEET_MODEL} version (\d+) \(alias staging\)", r.stdout)[1]
    assert list(run_dir.glob("checkpoint-step-*/model/config.json")) and (shared / "mlflow.db").is_file()

    # The fleet's registry is the one on its storage; this machine's default one doesn't have it.
    r = rayfleet_cli("models", "-f", str(fleet_up), "--name", FLEET_MODEL)
    assert r.returncode == 0 and f"registry://{FLEET_MODEL}/{version}" in r.stdout, r.stdout + r.stderr
    r = rayfleet_cli("models", "--name", FLEET_MODEL)
    assert r.returncode == 0 and FLEET_MODEL not in r.stdout, r.stdout + r.stderr
    r = rayfleet_cli("models", "promote", FLEET_MODEL, version, "--alias", "production", "-f", str(fleet_up))
    assert r.returncode == 0, r.stdout + r.stderr
    r = rayfleet_cli("models", "-f", str(fleet_up), "show", FLEET_MODEL, version)
    files = Path(re.search(r"files:\s+(\S+)", r.stdout)[1])
    assert files.is_relative_to(shared / "mlartifacts") and (files / "config.json").is_file(), r.stdout

    t0 = time.monotonic()
    r = rayfleet_cli("serve", "--model", f"registry://{FLEET_MODEL}@production", "--name", "fleet-trained",
                     "--route-prefix", "/trained", "-f", str(fleet_up), "--timeout", "300", timeout=400)
    _timed("serve registry://…@production on the fleet", t0)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"model {files}" in r.stdout  # the replica loads the version's files from the share
        from rayfleet.serve.backends.base import BackendSettings, load_backend
        from rayfleet.serve.segment import TextTranslator
        from rayfleet.train.data import read_pairs

        texts = [en for en, _ in read_pairs(tmp_path / "data" / "validation.tsv")[:3]]
        resp = httpx.post(f"http://{head}:8000/trained/translate", json={"texts": texts}, timeout=60)
        assert resp.status_code == 200, resp.text
        for en, hyp in zip(texts, resp.json()["translations"]):
            print(f"{en!r} -> {hyp!r}")
        here = TextTranslator(load_backend("auto", BackendSettings(model=str(files)))).translate(texts)
        assert resp.json()["translations"] == [t.text for t in here]
    finally:
        rayfleet_cli("services", "delete", "fleet-trained", "-f", str(fleet_up))


def test_translator_on_the_fleet(lab, fleet_up, tiny_model):
    """`serve --model DIR` with DIR on this machine only (each host's /tmp is its own): rayfleet copies
    the model to the fleet's storage, where every replica reads it."""
    assert lab.hosts[1].exec(f"test -e {tiny_model}").returncode == 1  # the nodes can't see it
    t0 = time.monotonic()
    r = rayfleet_cli("serve", "--model", str(tiny_model), "-f", str(fleet_up), "--timeout", "400", timeout=500)
    _timed("serve on the fleet (model copied to its storage)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    copied = Path(re.search(r"^Service translator is up: 1 replica\(s\), model (\S+)$", r.stdout, re.M)[1])
    assert copied.parent == lab_shared(fleet_up) / "models" and copied.name.startswith(f"{tiny_model.name}-")
    head = lab.hosts[0].ip
    assert f"translate: http://{lab.hosts[0].fqdn}:8000/translate" in r.stdout  # the head as fleet.yaml names it
    resp = httpx.post(f"http://{head}:8000/translate", json={"text": "The cat sleeps."}, timeout=60)
    assert resp.status_code == 200 and resp.json()["translation"].strip()
    # Minutes after `up`: the workers rayfleet started are the ones still running, and the
    # autoscaler's updater left them alone (once per worker) without failing.
    assert all(_RAYLETS_AFTER_UP.values())
    assert {h.ip: _raylet_pid(h) for h in lab.hosts[1:]} == _RAYLETS_AFTER_UP
    temp = _spec(fleet_up).temp_dir
    monitor = lab.hosts[0].exec(f"cat {temp}/session_latest/logs/monitor.out").stdout
    skipped = [ln for ln in monitor.splitlines()
               if ln.strip() == "rayfleet up started Ray here moments ago for this head: not restarting it"]
    assert len(skipped) == 2, monitor[-3000:]
    assert "update-failed" not in monitor
    # HAProxy's files on the head: a 0700 directory of the fleet's user; another user can't use its admin socket.
    hp = haproxy_dir(temp)
    assert lab.hosts[0].exec(f"stat -c '%u %a' {hp}").stdout.split() == [str(lab.uid), "700"]
    (sock,) = lab.hosts[0].exec(f"find {hp} -name admin.sock").stdout.split()
    probe = "import socket, sys; s = socket.socket(socket.AF_UNIX)\ntry: s.connect(sys.argv[1]); print('connected')\n" \
            "except OSError as e: print(type(e).__name__)"
    other = lab.hosts[0].exec(f"setpriv --reuid=65534 --regid=65534 --clear-groups python3 -c {shlex.quote(probe)} {sock}")
    assert other.stdout.strip() == "PermissionError", other.stdout + other.stderr


def test_monitoring_turned_on_for_a_running_fleet(lab, fleet_up):
    """`monitoring: true` and `up` again: the head's own Prometheus (the distribution's binary) started by
    rayfleet, no Ray restarted; it scrapes every node and listens on the head's loopback only; `metrics
    query` and `metrics url` reach it through SSH and see the translator's texts; `up` again keeps it."""
    from rayfleet.cluster import fleet as fl

    spec = _spec(fleet_up)
    before = {n["node_ip"]: n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}
    data = yaml.safe_load(fleet_up.read_text())
    data["monitoring"] = True
    fleet_up.write_text(yaml.safe_dump(data))
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(fleet_up), timeout=600)
    _timed("up with monitoring turned on (Prometheus started, no Ray restart)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^  Prometheus started \(PID \d+\) on 127\.0\.0\.1:9090$", r.stdout, re.M), r.stdout
    assert ("  monitoring: Prometheus on the head's 127.0.0.1:9090, keeps 7d ('rayfleet metrics url -f "
            f"{fleet_up}' opens it)") in r.stdout, r.stdout
    assert {n["node_ip"]: n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE"} == before
    head = lab.hosts[0]
    listening = head.exec("ss -Hltn 'sport = :9090'").stdout.split()
    assert "127.0.0.1:9090" in listening and "0.0.0.0:9090" not in listening and "*:9090" not in listening, listening

    def query(promql: str) -> list[str]:
        q = rayfleet_cli("metrics", "query", promql, "-f", str(fleet_up), timeout=120)
        assert q.returncode == 0, q.stdout + q.stderr
        return [ln for ln in q.stdout.splitlines() if ln != "(no data)"]

    _wait_until(lambda: {h.ip for h in lab.hosts} <= {m[1] for ln in query('up{job="ray"} == 1')
                                                      if (m := re.search(r'instance="([\d.]+):6382"', ln))},
                120, "every node's metrics scraped")
    for _ in range(5):
        resp = httpx.post(f"http://{head.ip}:8000/translate", json={"text": "The cat sleeps."}, timeout=60)
        assert resp.status_code == 200
    _wait_until(lambda: (v := query('sum(ray_rayfleet_translator_texts_total{application="translator"})'))
                and float(v[0].split()[-1]) >= 5, 120, "the translator's texts counted")
    url = subprocess.Popen([str(Path(sys.executable).parent / "rayfleet"), "metrics", "url", "-f", str(fleet_up)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        local_url = url.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", local_url), local_url + url.stderr.read()
        assert httpx.get(f"{local_url}/-/ready", timeout=30).status_code == 200
    finally:
        url.terminate()
    assert url.wait(30) == 0
    r = rayfleet_cli("top", "-f", str(fleet_up), "--once", "--interval", "3", timeout=120)   # through the tunnel
    assert r.returncode == 0 and "from Prometheus http://127.0.0.1:" in r.stdout, r.stdout + r.stderr
    assert all(re.search(rf"^ *{re.escape(h.ip)} +\d+ ", r.stdout, re.M) for h in lab.hosts), r.stdout
    r = rayfleet_cli("up", "-f", str(fleet_up), timeout=600)
    assert r.returncode == 0 and re.search(r"^  Prometheus running \(PID \d+\)", r.stdout, re.M), r.stdout


def test_the_launchers_ssh_checks_host_keys(lab, fleet_up, tmp_path):
    """Ray's launcher runs ssh with StrictHostKeyChecking=no and /dev/null for known hosts; rayfleet gives
    it a ProxyCommand that checks the fleet's pinned keys. With Ray's own options: the pinned key gets
    in; another key pinned for the address gets nothing. The head holds the pinned keys for its
    autoscaler (by address: the autoscale test's workers are started through it)."""
    from ray.autoscaler._private.command_runner import SSHOptions

    from rayfleet.cluster import fleet as fl
    from rayfleet.cluster.launcher import proxy_command

    spec = _spec(fleet_up)
    user, key, _ = spec.ssh_for(spec.head)
    rendered = yaml.safe_load(fl.paths(spec).launcher_yaml.read_text())
    assert rendered["auth"]["ssh_proxy_command"] == proxy_command(spec)
    ray_ssh = ["ssh", *SSHOptions(key, None, ProxyCommand=proxy_command(spec)).to_ssh_options_list(timeout=10)]
    assert "StrictHostKeyChecking=no" in ray_ssh and f"UserKnownHostsFile={os.devnull}" in ray_ssh
    known = fl.paths(spec).known_hosts
    env = dict(os.environ, RAYFLEET_KNOWN_HOSTS=str(known), RAYFLEET_SSH_KEY=key)
    head = spec.head.address
    ok = subprocess.run([*ray_ssh, f"{user}@{head}", "echo in"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "in", ok.stderr
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = tmp_path / "known_hosts"   # the pinned file, with another key for the head's address
    forged.write_text("".join(ln + "\n" for ln in known.read_text().splitlines() if not ln.startswith(head + " "))
                      + head + " " + " ".join(other.with_suffix(".pub").read_text().split()[:2]) + "\n")
    bad = subprocess.run([*ray_ssh, f"{user}@{head}", "echo in"], env=dict(env, RAYFLEET_KNOWN_HOSTS=str(forged)),
                         capture_output=True, text=True, timeout=60)
    print(f"Ray's ssh options through rayfleet's ProxyCommand, another key pinned: rc {bad.returncode}, "
          f"{bad.stderr.strip()[-200:]!r}")
    assert bad.returncode == 255 and "in" not in bad.stdout and "Host key verification failed" in bad.stderr
    on_head = lab.hosts[0].exec(f"cat /home/{lab.user}/.rayfleet/{spec.name}/known_hosts").stdout
    for h in lab.hosts[1:]:
        assert any(ln.startswith(h.ip + " ssh-ed25519 ") for ln in on_head.splitlines()), on_head


def test_dashboard_through_an_ssh_tunnel(lab, fleet_up):
    """`rayfleet dashboard` (stdout a pipe): a local URL that reaches the head's dashboard through SSH; the
    Jobs API answers there with the token; the tunnel closes on SIGTERM."""
    from rayfleet.cluster import fleet as fl

    exe = Path(os.sys.executable).parent / "rayfleet"
    p = subprocess.Popen([str(exe), "dashboard", "-f", str(fleet_up)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        first = p.stdout.readline()
        m = re.fullmatch(rf"Dashboard: (http://127\.0\.0\.1:\d+)  \(through SSH to {re.escape(lab.hosts[0].fqdn)} "
                         rf"\({lab.hosts[0].ip}\); Ctrl-C closes it\)\n", first)
        assert m, first + p.stderr.read() if p.poll() is not None else first
        headers = fl.auth_headers(_spec(fleet_up))
        assert requests.get(f"{m[1]}/api/jobs/", headers=headers, timeout=30).status_code == 200
        assert requests.get(f"{m[1]}/api/jobs/", timeout=30).status_code == 401
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 0 and "Tunnel closed." in out, out


# What may answer a LAN host that holds no credentials, by port, and why (README, "Security": "Listening on
# the LAN"). Anything else that answers fails the test.
def _open_by_design(spec) -> dict[int, str]:
    from rayfleet.cluster.serving import replica_port_ranges

    p = spec.ports
    (http_lo, http_hi), _ = replica_port_ranges(p.min_replica, p.max_replica)
    named = {port: "a replica's own HTTP port: the service (API keys and limits are the app's)"
             for port in range(http_lo, http_hi + 1)}
    named.update({
        p.serve: "the services (HAProxy)",
        p.min_replica: "HAProxy's stats page (read-only)",
        p.min_replica + 1: "HAProxy's Prometheus metrics",
        p.min_replica + 2: "Serve's fallback proxy (the services, for HAProxy while no replica is up)",
        p.min_replica + 3: "Serve's fallback proxy, gRPC",
        p.metrics_export: "Ray's Prometheus metrics",
        p.dashboard_metrics: "the dashboard's Prometheus metrics",
        p.autoscaler_metrics: "the autoscaler's Prometheus metrics",
    })
    return named


def test_no_open_doors_on_the_lan(lab, fleet_up):
    """After up + serve: every socket listening on a non-loopback address on every host, and what it answers
    when another lab host connects without credentials (table printed). Only the ports the README names
    answer; the GCS, raylets and workers want the token."""
    import json

    from rayfleet.testing.doors import listening

    spec = _spec(fleet_up)
    by_design = _open_by_design(spec)
    rows, doors = [], []
    for i, h in enumerate(lab.hosts):
        socks = listening(h.exec("ss -ltnpH").stdout)
        targets = [[h.ip if s.address in ("*", "0.0.0.0", "[::]") else s.address.strip("[]").removeprefix("::ffff:"),
                    s.port] for s in socks]
        prober = lab.hosts[(i + 1) % len(lab.hosts)]   # another host of the LAN, no token, no key
        r = prober.exec(f"{VENV}/bin/python -m rayfleet.testing.doors {shlex.quote(json.dumps(targets))}",
                        timeout=600)
        answers = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        assert len(answers) == len(socks), r.stdout + r.stderr
        for s, a in zip(socks, answers):
            rows.append((h.fqdn, f"{a['address']}:{a['port']}", s.process, a["answer"], by_design.get(s.port, "")))
            if a["open"] and s.port not in by_design:
                doors.append(rows[-1])
    width = [max(len(r[k]) for r in rows) for k in range(4)]
    print(f"\n{len(rows)} sockets listening on the LAN, probed from another host without credentials:")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, width)) + (f"  <- {r[4]}" if r[4] else ""))
    assert len(rows) >= 3 * 5, rows   # Ray's sockets on every host were seen
    gcs = [r for r in rows if r[1] == f"{lab.hosts[0].ip}:{spec.ports.gcs}"]
    assert gcs and gcs[0][3] == "TLS: client certificate required", gcs
    assert doors == [], "answers without credentials on ports the README does not name: " + repr(doors)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Listening on the LAN**"):]
    for what in ("services (HAProxy)", "HAProxy's stats page", "Prometheus metrics", "a replica's own HTTP port"):
        assert what in section, what


def test_without_the_fleets_certificate_no_one_calls_the_gcs(lab, fleet_up, tmp_path):
    """Ray's gRPC runs with mutual TLS (security.tls, on by default): from another host of the LAN (this
    machine, on the lab's bridge), the GCS refuses plain gRPC even with the token, TLS without a client
    certificate, and a certificate of another CA; the fleet's own certificate gets through (and still
    needs the token). Joining as a node starts with these calls, so a node without the certificate can't."""
    import grpc

    from rayfleet.cluster import fleet as fl
    from rayfleet.cluster import tls

    spec = _spec(fleet_up)
    target = f"{lab.hosts[0].ip}:{spec.ports.gcs}"
    token = [("authorization", "Bearer " + fl.paths(spec).token.read_text().strip())]
    ca = (fl.paths(spec).dir / "tls" / "ca.crt").read_bytes()

    def call(credentials, metadata=token) -> str:
        with grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target) as ch:
            try:
                ch.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=5, metadata=metadata)
                return "OK"
            except grpc.RpcError as e:
                return e.code().name

    got = {
        "plain gRPC with the token": call(None),
        "TLS, no client certificate": call(grpc.ssl_channel_credentials(root_certificates=ca)),
        "TLS, another CA's certificate": call(tls.client_credentials(tmp_path / "other", spec.name)),
        "the fleet's certificate, no token": call(tls.client_credentials(fl.paths(spec).dir, spec.name), []),
        "the fleet's certificate and the token": call(tls.client_credentials(fl.paths(spec).dir, spec.name)),
    }
    print("\nGCS " + target + ":\n" + "\n".join(f"  {k}: {v}" for k, v in got.items()))
    assert got == {"plain gRPC with the token": "UNAVAILABLE", "TLS, no client certificate": "UNAVAILABLE",
                   "TLS, another CA's certificate": "UNAVAILABLE", "the fleet's certificate, no token": "UNAUTHENTICATED",
                   "the fleet's certificate and the token": "OK"}
    for h in lab.hosts:   # each node holds its own key only, private
        d = h.home(lab.user) / ".rayfleet" / spec.name / "tls"
        assert sorted(f.name for f in d.iterdir()) == ["ca.crt", "node.crt", "node.key"]
        assert {oct(f.stat().st_mode & 0o777) for f in d.iterdir()} | {oct(d.stat().st_mode & 0o777)} == {"0o600", "0o700"}
        assert (d / "node.key").read_bytes() == (fl.paths(spec).dir / "tls" / "nodes" / f"{h.ip}.key").read_bytes()


def test_own_code_own_app_and_the_api_on_the_fleet(lab, fleet_up):
    """rayfleet submit of a Ray Train script that is not rayfleet's: 2 DDP workers on 2 nodes (the
    translator holds the third CPU), checkpoints on the shared storage; an own Serve app packaged
    on the shared storage; rayfleet.connect(fleet).init() through Ray Client with the token."""
    t0 = time.monotonic()
    r = rayfleet_cli("submit", "-f", str(fleet_up), "--working-dir", "examples/own-code", "--", "python", "train.py",
                     "--epochs", "2", "--num-workers", "2", timeout=600)
    _timed("submit examples/own-code (2 workers)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = set(re.findall(r"worker \d/2 on \S+ \(([\d.]+)\)", r.stdout))
    assert len(nodes) == 2 and nodes <= {h.ip for h in lab.hosts}, r.stdout
    checkpoint = Path(re.search(r"^checkpoint: (\S+)$", r.stdout, re.M).group(1))
    assert checkpoint.is_relative_to(lab_shared(fleet_up)) and (checkpoint / "model.pt").is_file()

    import rayfleet

    c = rayfleet.connect(fleet_up)
    assert c.address == f"ray://{lab.hosts[0].ip}:10001"
    assert any(j.kind == "submit" and j.status == "SUCCEEDED" for j in c.jobs())
    t0 = time.monotonic()
    status = c.serve(ROOT / "examples" / "own-app" / "service.yaml", timeout_s=400)
    _timed("serve examples/own-app on the fleet", t0)
    assert status.kind == "app" and status.url == f"http://{lab.hosts[0].fqdn}:8000/sentiment"
    assert str(lab_shared(fleet_up)) in str(list((lab_shared(fleet_up) / "apps" / "sentiment").iterdir()))
    resp = httpx.post(f"{status.url}/predict", json={"text": "a great, friendly place"}, timeout=60)
    assert resp.status_code == 200 and resp.json()["label"] == "positive"
    c.delete_service("sentiment")

    script = ("import sys, ray, rayfleet\n"
              "rayfleet.connect(sys.argv[1]).init()\n"
              "print(len([n for n in ray.nodes() if n['Alive']]), ray.get(ray.remote(lambda: 6 * 7).remote()))\n")
    out = subprocess.run([os.sys.executable, "-c", script, str(fleet_up)], capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "3 42"


def _attempts(folder: Path) -> dict[int, list[tuple[str, str, float]]]:
    """Task index -> (node IP, Ray node id, start time) of each of its attempts, in order."""
    out = {}
    for f in folder.iterdir():
        rows = [ln.split() for ln in f.read_text().splitlines()]
        out[int(f.name)] = [(ip, node, float(t)) for ip, node, t in (r for r in rows if len(r) == 3)]
    return out


def test_worker_raylet_killed_tasks_complete_then_up_restores(lab, fleet_up):
    """A worker's raylet is killed while a task runs there: that task is retried on another Ray
    node, the job gets every result; the node is marked dead and `up` brings every host back."""
    from concurrent.futures import ThreadPoolExecutor

    from rayfleet.cluster import fleet as fl

    # Each attempt of a task appends where and when it started to a file on the shared storage.
    attempts = lab_shared(fleet_up) / f"attempts-{time.monotonic_ns()}"
    attempts.mkdir()
    attempts.chmod(0o777)   # the tasks write there as the fleet's user
    script = f"""
        import ray, time
        ray.init()
        @ray.remote(num_cpus=1, max_retries=5)
        def work(i):
            where = f"{{ray.util.get_node_ip_address()}} {{ray.get_runtime_context().get_node_id()}}"
            with open(f"{attempts}/{{i}}", "a") as f:
                f.write(f"{{where}} {{time.time():.3f}}\\n")
            time.sleep(3)
            return i
        out = ray.get([work.remote(i) for i in range(24)])
        print("DONE", len(out), sum(out))
    """
    workers = {h.ip: h for h in lab.hosts[1:]}
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(_run_job, fleet_up, script, 400)
        # The victim: the first worker a task is seen running on (a Serve replica may hold the
        # only CPU of the other one). Its raylet is killed at once, while that task sleeps.
        deadline = time.monotonic() + 180
        while not (running := [(i, a[-1]) for i, a in _attempts(attempts).items() if a and a[-1][0] in workers]):
            assert not fut.done(), f"the job ended before a task ran on a worker: {fut.result()}"
            assert time.monotonic() < deadline, f"no task on a worker after 180 s: {_attempts(attempts)}"
            time.sleep(0.05)
        task, (victim_ip, victim_node, _) = running[0]
        r = workers[victim_ip].exec("pid=$(pgrep -x raylet) && kill -9 $pid && echo $pid")
        killed_at = time.time()
        assert r.returncode == 0 and r.stdout.strip(), f"no raylet killed on {victim_ip}: {r.stdout}{r.stderr}"
        logs = fut.result()
    assert "DONE 24 276" in logs
    tried = _attempts(attempts)
    assert sorted(tried) == list(range(24)) and all(tried.values())
    retried = {i: a for i, a in tried.items() if len(a) > 1}
    print(f"[multihost] killed the raylet of {victim_ip} (node {victim_node[:8]}) during task {task}; retried: "
          + "; ".join(f"task {i}: " + ", ".join(f"{ip} {node[:8]} at {t - killed_at:+.1f} s" for ip, node, t in a)
                      for i, a in sorted(retried.items())))
    # The task that was running there ran again, after the kill, on another Ray node (perhaps on the
    # same host, if Ray was restarted there meanwhile); only tasks cut short there were retried.
    assert task in retried
    for i, (first, *again) in retried.items():
        assert first[1] == victim_node, (i, retried[i])
        assert all(node != victim_node and t > killed_at for _, node, t in again), (i, retried[i])
    spec = _spec(fleet_up)
    deadline = time.monotonic() + 90
    while not any(n["node_id"] == victim_node and n["state"] == "DEAD" for n in fl.nodes(spec)):
        assert time.monotonic() < deadline, "the killed node was never marked dead"
        time.sleep(2)
    r = rayfleet_cli("status", "-f", str(fleet_up))
    if any(n["node_ip"] == victim_ip and n["state"] == "ALIVE" for n in fl.nodes(spec)):   # restarted meanwhile
        assert re.search(r"\(\d+ earlier incarnation\(s\) of restarted nodes not shown\)", r.stdout), r.stdout
    else:
        assert "DEAD" in r.stdout, r.stdout
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(fleet_up), "--accept-new-hosts", "--skip-check", timeout=600)
    _timed("up after a worker died (to all alive)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    alive = {n["node_ip"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}
    assert alive == {h.ip for h in lab.hosts}


def test_changed_fleet_yaml_is_applied_and_a_new_runtime_replaces_the_old(lab, fleet_up, tmp_path):
    """Another CPU count on one worker, one more package for the users' jobs (a wheel of this machine), and
    services on every node (serve_host 0.0.0.0): a new runtime on every node, Ray restarted from it, the old
    runtime removed once it runs."""
    from rayfleet.cluster import fleet as fl
    from rayfleet.cluster.runtime import local_lock
    from rayfleet.testing.wheels import build_wheel

    old = local_lock().digest
    wheel = build_wheel(tmp_path, "rfextra", "1.0", "VALUE = 'extra'\n")
    data = yaml.safe_load(fleet_up.read_text())
    data["workers"][0]["resources"] = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
    data["runtime"] = {"extra_requirements": [str(wheel)]}
    data["security"] = {"serve_host": "0.0.0.0"}   # a proxy on every node (the head-failure test needs them)
    fleet_up.write_text(yaml.safe_dump(data))
    new = local_lock((str(wheel),)).digest
    assert new != old
    old_haproxy = set(lab.hosts[0].exec("pgrep -f haproxy").stdout.split())
    assert old_haproxy, "the translator's HAProxy should run on the head"
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(fleet_up), "--accept-new-hosts", "--skip-check", timeout=900)
    _timed("up with a changed fleet.yaml (a new runtime: one more package)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    cpus = {n["node_ip"]: n["resources_total"].get("CPU") for n in fl.nodes(_spec(fleet_up)) if n["state"] == "ALIVE"}
    assert cpus == {lab.hosts[0].ip: 1.0, lab.hosts[1].ip: 2.0, lab.hosts[2].ip: 1.0}
    for h in lab.hosts:
        assert re.search(rf"{re.escape(h.fqdn)} \({h.ip}\): runtime {new} installed in \d+ s", r.stdout), r.stdout
        assert _runtimes(lab, h) == [new]
        got = h.exec(f"/home/{lab.user}/.rayfleet/runtime/{new}/bin/python -c 'import rfextra; print(rfextra.VALUE)'")
        assert got.stdout.strip() == "extra", got.stderr
        assert f"/runtime/{new}/" in h.exec("ps -eww -o args | grep '[r]aylet/raylet'").stdout
    # Ray restarted on the head: the old Serve's HAProxy went with it (Ray leaves it running: it would
    # keep port 8000 and the next service's HAProxy could not bind it) ...
    assert not old_haproxy & set(lab.hosts[0].exec("pgrep -f haproxy").stdout.split())
    # ... and the head, started afresh, lost the translator: `up` deployed it again from its kept spec.
    assert "Re-applied service translator: the cluster had lost it" in r.stdout, r.stdout
    resp = httpx.post(f"http://{lab.hosts[0].ip}:8000/translate", json={"text": "The cat sleeps."}, timeout=60)
    assert resp.status_code == 200
    r = rayfleet_cli("services", "delete", "translator", "-f", str(fleet_up))   # its CPU for the next test
    assert r.returncode == 0, r.stdout + r.stderr


def _head_dir(lab) -> Path:
    return lab.hosts[0].home(lab.user) / ".rayfleet" / "lab" / "head"


def _serve_ha(fleet_up, tiny_model, tmp_path) -> Path:
    """The 'ha' service: 4 replicas of 1 CPU on 4 CPUs (1 + 2 + 1): some on each worker."""
    service = tmp_path / "ha.yaml"
    service.write_text(yaml.safe_dump({"name": "ha", "route_prefix": "/ha", "model": str(tiny_model), "replicas": 4,
                                       "resources": {"num_cpus": 1}, "version": "v1"}))
    r = rayfleet_cli("serve", str(service), "-f", str(fleet_up), "--timeout", "400", timeout=500)
    assert r.returncode == 0, r.stdout + r.stderr
    return service


def _kill_the_head_under_load(lab, fleet_up, store: str) -> None:
    """Every Ray process on the head SIGKILLed while clients send requests to a worker's proxy: no request
    fails; the supervisor starts the head again; the workers rejoin under their old node ids; 'ha' RUNNING
    again without a redeploy; `status` tells."""
    from rayfleet.cluster import fleet as fl
    from rayfleet.testing.load import Load

    spec = _spec(fleet_up)
    before = {n["node_ip"]: n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}
    assert set(before) == {h.ip for h in lab.hosts}
    sid = int((_head_dir(lab) / "supervisor.pid").read_text())
    with Load(f"http://{lab.hosts[1].ip}:8000/ha", clients=2) as load:
        load.wait_for(20)
        head = lab.hosts[0]
        killed = head.exec(f"ps -o pid= -s {sid} | grep -vw {sid} | xargs -r kill -9; echo done")
        assert killed.stdout.strip().endswith("done"), killed.stderr
        t0, at_kill = time.monotonic(), load.count()
        restarts = _head_dir(lab) / "restarts.json"
        _wait_until(lambda: restarts.exists() and json.loads(restarts.read_text())["count"] >= 1, 120,
                    "the head started again")
        _timed(f"head killed ({store}): Ray started again on it by its supervisor", t0)
        def alive() -> dict[str, str]:
            # `ray start --head` returns (and the supervisor records the restart) before the dashboard
            # answers: until it does, no node table
            try:
                return {n["node_ip"]: n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}
            except ClusterNotRunning:
                return {}

        _wait_until(lambda: (a := alive()) and head.ip in a
                    and {ip: i for ip, i in a.items() if ip != head.ip} == {h.ip: before[h.ip] for h in lab.hosts[1:]},
                    120, "the workers ALIVE under their old node ids, and the head")
        _timed(f"head killed ({store}): every node ALIVE (the workers under their old node ids)", t0)
        _wait_until(lambda: re.search(r"│ ha +│ \S+ +│ RUNNING +│ 4 +│", rayfleet_cli(
            "services", "-f", str(fleet_up)).stdout), 120, "the service RUNNING with 4 replicas")
        _timed(f"head killed ({store}): the service RUNNING again (nothing redeployed)", t0)
        load.wait_for(20)
    print(f"{load.count()} requests ({load.count() - at_kill} after the kill), {len(load.errors)} failed, "
          f"{load.resent} resent")
    assert load.errors == [], load.errors[:5]
    _status_tells_the_restarts(lab, fleet_up, first=r"(gcs_server|raylet) died.*")


def _status_tells_the_restarts(lab, fleet_up, first: str, since: int = 0) -> int:
    """`status` says how often the head was started again and why, as its supervisor recorded it (the first
    restart after ``since`` for the reason ``first``, a regular expression); returns the
    count. A restart beyond the one caused (a head starved of CPU when the whole suite runs two ways at once
    has had its raylet die again after its recovery) is allowed: the supervisor's log, with the dead process's
    last lines, goes to test-artifacts/ for a look, as it does when a restart took more than one `ray start`."""
    data = json.loads((_head_dir(lab) / "restarts.json").read_text())
    count, history = data["count"], data["history"]
    assert re.fullmatch(first, history[since]["reason"]), history
    r = rayfleet_cli("status", "-f", str(fleet_up))
    assert re.search(rf"^Head: restarted {count} time\(s\); last at .* \({re.escape(history[-1]['reason'])}\), "
                     r"back in \d+ s( \(at the \d+\w\w try of ray start\))?$", r.stdout, re.M), r.stdout
    tries = max(h.get("tries", 1) for h in history[since:])
    if count > since + 1 or tries > 1:
        ARTIFACTS.mkdir(exist_ok=True)
        log = ARTIFACTS / f"head-restarted-again-{int(time.time())}.log"
        log.write_text(json.dumps(history, indent=2) + "\n" + (_head_dir(lab) / "supervisor.log").read_text())
        print(f"the head was started again {count - since} time(s), at most {tries} tries of ray start (see {log})")
    return count


def test_head_killed_under_load_then_its_supervisor_then_a_reboot(lab, fleet_up, tiny_model, tmp_path):
    """Head recovery as a fleet gets it by default: RocksDB on the head's disk, the supervisor a systemd user
    unit, a proxy on every node (serve_host 0.0.0.0), replicas on every node. Three ways the head goes:
    every Ray process on it SIGKILLed while clients send requests to a worker's proxy (no request fails; the
    supervisor starts it again); the supervisor SIGKILLed (systemd starts it again, and the head's Ray goes
    with it); every process of the user killed and its manager booted again, as a reboot does (the unit
    starts the head, and the supervisor the head's Prometheus). Each time the workers rejoin under their old
    node ids, the service is RUNNING again and answers (nothing redeployed), and `status` says why the head
    started again. An update succeeds afterwards. (One test, one deployment: each recovery costs ~40-100 s on this machine.)"""
    from rayfleet.cluster import fleet as fl

    spec = _spec(fleet_up)
    service = _serve_ha(fleet_up, tiny_model, tmp_path)
    head, unit = lab.hosts[0], "rayfleet-head-lab.service"
    before = {n["node_ip"]: n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}
    restarts = _head_dir(lab) / "restarts.json"

    def main_pid() -> str:
        return head.user_systemctl("show", "--property=MainPID", "--value", unit).stdout.strip()

    def back(reason: str, t0: float) -> None:
        nonlocal count
        _wait_until(lambda: restarts.exists() and json.loads(restarts.read_text())["count"] > count, 120,
                    "the head started again")
        _timed(f"systemd: head started again ({reason})", t0)

        def alive() -> dict[str, str]:
            try:
                return {n["node_ip"]: n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}
            except ClusterNotRunning:   # the dashboard is not up yet
                return {}
        _wait_until(lambda: (a := alive()) and head.ip in a and all(a.get(ip) == i for ip, i in before.items()
                                                                    if ip != head.ip), 120, "every node ALIVE")
        _timed(f"systemd: every node ALIVE, the workers under their old ids ({reason})", t0)
        _wait_until(lambda: re.search(r"│ ha +│ \S+ +│ RUNNING +│ 4 +│", rayfleet_cli(
            "services", "-f", str(fleet_up)).stdout), 120, "the service RUNNING")
        _timed(f"systemd: the service RUNNING again ({reason})", t0)
        def answers() -> bool:   # (the head's proxy, started again by Serve's controller)
            try:
                return httpx.post(f"http://{head.ip}:8000/ha/translate", json={"text": "The cat sleeps."},
                                  timeout=30).status_code == 200
            except httpx.HTTPError:
                return False
        _wait_until(answers, 60, "the service answering on the head's proxy")
        count = _status_tells_the_restarts(lab, fleet_up, first=re.escape(reason), since=count)
        r = rayfleet_cli("status", "-f", str(fleet_up))
        assert "does not answer" not in r.stdout + r.stderr, r.stdout + r.stderr

    try:
        _kill_the_head_under_load(lab, fleet_up, "RocksDB")
        count = json.loads(restarts.read_text())["count"]
        pid = main_pid()
        assert pid.isdigit() and pid != "0"
        t0 = time.monotonic()
        head.exec(f"kill -9 {pid}")
        back("its supervisor was started again by systemd", t0)
        assert main_pid() not in (pid, "0")

        prometheus = _head_dir(lab).parent / "prometheus" / "prometheus.pid"   # monitoring is on (test above)
        before_reboot = json.loads(prometheus.read_text())["pid"]
        t0 = time.monotonic()
        head.reboot_user()   # everything of the user gone, as in a reboot; the manager starts the enabled unit
        # (the lab's reboot keeps the kernel's boot time, so the reason is the same; a unit test has the other)
        back("its supervisor was started again by systemd", t0)
        # Prometheus went with the reboot; the head's supervisor started it again, as `up` had configured it.
        _wait_until(lambda: head.exec("curl -sf http://127.0.0.1:9090/-/ready").returncode == 0, 60,
                    "Prometheus answering on the head again")
        assert json.loads(prometheus.read_text())["pid"] != before_reboot

        # An update afterwards: a new version on 2 replicas (Serve stops 2 old ones, then starts the new ones
        # beside the other 2: room for them on these 4 CPUs).
        service.write_text(service.read_text().replace("version: v1", "version: v2").replace("replicas: 4",
                                                                                              "replicas: 2"))
        r = rayfleet_cli("serve", str(service), "-f", str(fleet_up), "--timeout", "400", timeout=500)
        assert r.returncode == 0, r.stdout + r.stderr
        resp = httpx.post(f"http://{lab.hosts[2].ip}:8000/ha/translate", json={"text": "The cat sleeps."}, timeout=60)
        assert resp.status_code == 200 and resp.headers.get("x-model-version") == "v2", resp.headers
    finally:
        rayfleet_cli("services", "delete", "ha", "-f", str(fleet_up))


def test_head_killed_with_redis_on_a_worker_as_the_store(lab, fleet_up, tiny_model, tmp_path):
    """head_recovery.store: redis, rayfleet's Redis on a worker (the distribution's redis-server, TLS with the
    fleet's certificates, its password never on a command line or in a log here): the same head kill under
    load, the same recovery."""
    data = yaml.safe_load(fleet_up.read_text())
    redis_host = lab.hosts[2]
    # (and the supervisor as rayfleet's watchdog, as on a head without systemd)
    data["head_recovery"] = {"store": "redis", "redis": {"host": redis_host.fqdn}, "supervisor": "watchdog"}
    # (as the changed-yaml test left them: a proxy on every node, 4 CPUs for the 4 replicas)
    data["security"] = {"serve_host": "0.0.0.0"}
    data["workers"][0]["resources"] = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
    fleet_up.write_text(yaml.safe_dump(data))
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(fleet_up), timeout=900)   # with its check: redis-server on that worker
    _timed("up with head_recovery.store: redis (Ray restarted on every node)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Redis started on {redis_host.fqdn}" in r.stdout, r.stdout
    assert ("\n  supervisor: rayfleet's watchdog (head_recovery.supervisor: watchdog): starts the head again when "
            "it dies, not after a reboot (run 'rayfleet up' then)\n") in r.stdout, r.stdout
    assert lab.hosts[0].user_systemctl("cat", "rayfleet-head-lab.service").returncode != 0   # no unit left
    password = (Path(os.environ["RAYFLEET_HOME"]) / "fleets" / "lab" / "redis-password").read_text().strip()
    on_head = _head_dir(lab) / "redis-password"
    assert on_head.read_text().strip() == password and on_head.stat().st_mode & 0o077 == 0
    up_log = (Path(os.environ["RAYFLEET_HOME"]) / "fleets" / "lab" / "up.log").read_text()
    assert password not in up_log and password not in r.stdout + r.stderr
    conf = redis_host.home(lab.user) / ".rayfleet" / "lab" / "redis" / "redis.conf"
    assert "tls-port 6390" in conf.read_text() and conf.stat().st_mode & 0o077 == 0
    pid = (conf.parent / "redis.pid").read_text().strip()
    assert password not in redis_host.exec(f"cat /proc/{pid}/cmdline").stdout
    inside = f"/home/{lab.user}/.rayfleet/lab"   # as the host sees it
    t = f"{inside}/tls"
    keys = redis_host.exec(f"REDISCLI_AUTH=$(awk '/^requirepass /{{print $2}}' {inside}/redis/redis.conf) redis-cli "
                           f"-h {redis_host.ip} -p 6390 --tls --cacert {t}/ca.crt --cert {t}/node.crt "
                           f"--key {t}/node.key --scan")
    assert "RAYlab@NODE" in keys.stdout.split(), keys.stdout + keys.stderr   # the GCS keeps its tables there
    _serve_ha(fleet_up, tiny_model, tmp_path)
    try:
        _kill_the_head_under_load(lab, fleet_up, "Redis")
    finally:
        rayfleet_cli("services", "delete", "ha", "-f", str(fleet_up))


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(1)


def test_down_leaves_no_ray_process(lab, fleet_up, tiny_model):
    from rayfleet.cluster import fleet as fl

    r = rayfleet_cli("serve", "--model", str(tiny_model), "-f", str(fleet_up), "--timeout", "300", timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr   # a service (so HAProxy) on the fleet at down

    key = lab.hosts[0].home(lab.user) / "ray_bootstrap_key.pem"   # Ray's launcher copies the SSH key to the head
    assert key.exists()
    t0 = time.monotonic()
    r = rayfleet_cli("down", "-f", str(fleet_up), timeout=300)
    _timed("down", t0)  # the 20 s target is checked by benchmarks/cluster_bench.py, not here
    assert r.returncode == 0, r.stdout + r.stderr
    left = {h: p for h, p in fl.ray_processes(_spec(fleet_up)).items() if p}
    assert left == {}
    for h in lab.hosts:  # seen from inside each host too, Serve's HAProxy included (the translator ran), and
        # the head's store, Redis (head_recovery.store: redis since the test before)
        assert h.exec("pgrep -f 'raylet|gcs_server|ray::|haproxy|redis-server|prometheus'").stdout.strip() == ""
        assert not (h.home(lab.user) / ".rayfleet" / "lab" / "redis").exists()
    assert not key.exists()   # no private key left on any node
    assert "rayfleet" not in lab.hosts[0].user_systemctl("list-unit-files", "--no-legend").stdout   # nor a unit
    assert not any((h.home(lab.user) / ".rayfleet" / "lab" / "tls").exists() for h in lab.hosts)   # nor a TLS key


def test_autoscale_up_on_demand_down_when_idle_and_a_lost_service_reapplied(lab, tmp_path, tiny_model):
    """Workers started by the autoscaler on demand and stopped when idle. Then, on this fleet without head
    recovery (head_recovery: off): the head's Ray killed, `rayfleet up` starts it afresh, without the
    service it ran, and deploys that service again from the spec rayfleet kept (and says so)."""
    from rayfleet.cluster import fleet as fl

    ff = _fleet(lab, tmp_path / "fleet.yaml", name="auto", head_recovery="off",
                autoscale={"min_workers": 0, "max_workers": 2, "idle_timeout_minutes": 0.2})
    spec = _spec(ff)
    t0 = time.monotonic()
    r = rayfleet_cli("up", "-f", str(ff), "--accept-new-hosts", "--skip-check", timeout=600)
    _timed("autoscale fleet up (head only)", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        alive = lambda: {n["node_ip"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}  # noqa: E731
        assert alive() == {lab.hosts[0].ip}
        t0 = time.monotonic()
        # Demand: 6 one-CPU tasks on a 1-CPU head. Each holds its CPU until a second
        # node has joined (at most 300 s), so the queue stays until the autoscaler acts.
        logs = _run_job(ff, """
            import ray, time
            ray.init()
            @ray.remote(num_cpus=1)
            def where():
                t0 = time.time()
                while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() - t0 < 300:
                    time.sleep(1)
                time.sleep(2)
                return ray.util.get_node_ip_address()
            ips = ray.get([where.remote() for _ in range(6)])
            print("IPS", ",".join(sorted(set(ips))))
        """, timeout=500)
        _timed("demand served (workers started by the autoscaler)", t0)
        used = next(ln for ln in logs.splitlines() if ln.startswith("IPS ")).split()[1].split(",")
        assert len(used) >= 2, used
        t0 = time.monotonic()
        deadline = time.monotonic() + 240
        while alive() != {lab.hosts[0].ip}:
            assert time.monotonic() < deadline, f"workers still alive: {alive()}"
            time.sleep(3)
        _timed("idle workers stopped", t0)

        r = rayfleet_cli("serve", "--model", str(tiny_model), "-f", str(ff), "--timeout", "300", timeout=400)
        assert r.returncode == 0, r.stdout + r.stderr
        url = f"http://{lab.hosts[0].ip}:8000/translate"
        before = httpx.post(url, json={"text": "The cat sleeps."}, timeout=60).json()
        # rayfleet top on a fleet without Prometheus: every node's metrics endpoint, read from this machine
        r = rayfleet_cli("top", "-f", str(ff), "--once", "--interval", "3", timeout=120)
        assert r.returncode == 0 and f"from {len(lab.hosts)} node metrics endpoint(s)" in r.stdout, r.stdout + r.stderr
        assert re.search(rf"^ *{re.escape(lab.hosts[0].ip)} +\d+ ", r.stdout, re.M), r.stdout
        assert re.search(r"^ *translator +[\d.]+ ", r.stdout, re.M), r.stdout
        killed = lab.hosts[0].exec("pgrep -f '[r]aylet|[g]cs_server|[r]ay::|[d]ashboard|[h]aproxy|[m]onitor' "
                                   "| xargs -r kill -9; echo done")
        assert killed.stdout.strip().endswith("done"), killed.stderr
        deadline = time.monotonic() + 60
        while lab.hosts[0].exec("pgrep -f '[g]cs_server'").stdout.strip():
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(3)
        assert lab.hosts[0].exec("pgrep -f '[g]cs_server'").stdout.strip() == ""   # nothing started it again
        t0 = time.monotonic()
        r = rayfleet_cli("up", "-f", str(ff), "--skip-check", timeout=600)
        _timed("up after the head was lost without a store (service re-applied)", t0)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Re-applied service translator: the cluster had lost it" in r.stdout, r.stdout
        after = httpx.post(url, json={"text": "The cat sleeps."}, timeout=60)
        assert after.status_code == 200 and after.json() == before
    finally:
        r = rayfleet_cli("down", "-f", str(ff), timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr


def test_no_secret_on_the_wire(lab):
    """Everything on the lab's LAN since the module began (but SSH: encrypted) - check, up on bare hosts,
    jobs, training, serving, translating, the Ray Client, down, the autoscaled fleet - searched for the
    fleets' tokens (as text and HPACK-coded), the private keys (SSH, TLS) and the password of the head's
    Redis: 0 found."""
    from rayfleet.cluster.state import state_dir
    from rayfleet.testing.capture import forms, search

    summary = _WIRE["capture"].stop()
    # A token as text (HTTP/1.1, or anywhere) and as the HTTP/2 header gRPC sends (maybe Huffman-coded);
    # a private key by the middle line of its PEM body (the key's own bytes: an OpenSSH key's first
    # lines are the same for every key of its type).
    secrets = {f"token of fleet {t.parent.name}": [t.read_bytes().strip(), forms(b"Bearer " + t.read_bytes().strip())[1]]
               for t in (state_dir() / "fleets").glob("*/auth_token")}
    assert len(secrets) >= 2, secrets   # the module's fleet and the autoscaled one
    pem = lambda p: [(lambda b: b[len(b) // 2])(p.read_text().splitlines()[1:-1]).encode()]  # noqa: E731
    secrets["the SSH private key"] = pem(lab.key)
    secrets["the nodes' TLS keys"] = [b for k in (state_dir() / "fleets").glob("*/tls/nodes/*.key") for b in pem(k)]
    # rayfleet's Redis on a worker (the head's store): its password, from the head, over TLS
    secrets["the Redis password"] = [p.read_bytes().strip() for p in (state_dir() / "fleets").glob("*/redis-password")]
    assert secrets["the SSH private key"] and secrets["the nodes' TLS keys"] and secrets["the Redis password"]
    rep = search(_WIRE["pcap"], secrets)
    print(f"\ntcpdump: {summary.splitlines()[0] if summary else '?'}\n{rep.summary}")
    assert rep.tcp_packets > 10_000, rep.summary   # the module's traffic was seen
    assert rep.found == [], rep.summary
