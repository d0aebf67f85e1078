"""Redis as the head's store (cluster/redis_store.py), against the distribution's real redis-server on
loopback: the script `up` runs on the Redis node starts it with the fleet's password (never on a command
line), leaves it running when nothing changed, and `down`'s command stops it and removes its files; with
TLS (Redis on another node of a fleet with security.tls) only a client with the fleet's certificate gets
in; the head's start (node_start) refuses a wrong password and empties the cluster's keys."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from rayfleet.cluster import redis_store, tls
from rayfleet.config.fleet import FleetSpec

pytestmark = pytest.mark.unit

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (./test installs it)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fleet(port: int, host: str | None = None) -> FleetSpec:
    redis = {"port": port} | ({"host": host} if host else {})
    return FleetSpec.model_validate({"name": "lab", "python": "/opt/venv", "head": {"host": "127.0.0.1"},
                                     "workers": [{"host": "127.0.0.2"}],
                                     "head_recovery": {"store": "redis", "redis": redis}})


def _run(script: str, home: Path, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], input=password + "\n", capture_output=True, text=True,
                          env=dict(os.environ, HOME=str(home)), timeout=60)


def _stop(fleet: FleetSpec, home: Path) -> None:
    subprocess.run(["bash", "-c", redis_store.stop_command(fleet)], env=dict(os.environ, HOME=str(home)), timeout=30)


def test_rayfleets_redis_on_the_head_starts_once_answers_with_the_password_and_stops(tmp_path):
    fleet = _fleet(_free_port())
    password = redis_store.password(fleet, tmp_path)
    assert len(password) == 64 and stat.S_IMODE((tmp_path / redis_store.PASSWORD_FILE).stat().st_mode) == 0o600
    assert redis_store.password(fleet, tmp_path) == password   # made once
    plan = redis_store.plan(fleet, "~/.rayfleet/lab/head")
    assert plan["url"] == f"redis://127.0.0.1:{fleet.head_recovery.redis.port}" and plan["env"] == {}
    home = tmp_path / "home"
    home.mkdir()
    script = redis_store.start_script(fleet)
    assert password not in script
    try:
        r = _run(script, home, password)
        assert r.returncode == 0 and r.stdout.strip() == "started", r.stdout + r.stderr
        d = home / ".rayfleet" / "lab" / "redis"
        conf = (d / "redis.conf").read_text()
        assert stat.S_IMODE((d / "redis.conf").stat().st_mode) == 0o600 and f"requirepass {password}" in conf
        assert "bind 127.0.0.1\n" in conf and "timeout 0\n" in conf and "appendonly yes\n" in conf
        pid = int((d / "redis.pid").read_text())
        assert password not in Path(f"/proc/{pid}/cmdline").read_text()
        assert redis_store.ping(plan["url"], password) == ""
        assert redis_store.ping(plan["url"], "wrong").startswith("WRONGPASS")
        assert redis_store.ping(plan["url"], "").startswith("NOAUTH")
        r = _run(script, home, password)   # the same config: left running
        assert r.stdout.strip() == "running" and int((d / "redis.pid").read_text()) == pid
    finally:
        _stop(fleet, home)
    assert not Path(f"/proc/{pid}").exists() and not d.exists()
    assert redis_store.ping(plan["url"], password).startswith("can't connect")


def test_redis_on_another_node_speaks_tls_and_wants_the_fleets_certificate(tmp_path):
    port = _free_port()
    fleet = _fleet(port, host="127.0.0.2")
    plan = redis_store.plan(fleet, "~/.rayfleet/lab/head")
    assert plan["url"] == f"rediss://127.0.0.2:{port}"
    home = tmp_path / "home"
    remote = home / tls.remote_dir(fleet).removeprefix("~/")
    remote.mkdir(parents=True)
    crt = tls.ensure_node_cert(tmp_path / "fleet", fleet, fleet.workers[0])
    shutil.copy(tls.tls_dir(tmp_path / "fleet") / "ca.crt", remote / "ca.crt")
    shutil.copy(crt, remote / "node.crt")
    shutil.copy(crt.with_suffix(".key"), remote / "node.key")
    password = redis_store.password(fleet, tmp_path)
    try:
        r = _run(redis_store.start_script(fleet), home, password)
        assert r.returncode == 0 and r.stdout.strip() == "started", r.stdout + r.stderr
        files = {k: str(home / v.removeprefix("~/")) for k, v in plan["env"].items()}
        assert set(files) == {"RAY_REDIS_CA_CERT", "RAY_REDIS_CLIENT_CERT", "RAY_REDIS_CLIENT_KEY"}
        assert redis_store.ping(plan["url"], password, ssl_files=files) == ""
        no_cert = {"RAY_REDIS_CA_CERT": files["RAY_REDIS_CA_CERT"]}
        assert redis_store.ping(plan["url"], password, ssl_files=no_cert) != ""
        assert redis_store.ping(f"redis://127.0.0.2:{port}", password) != ""   # no plain text on that port
    finally:
        _stop(fleet, home)


def test_a_fresh_head_on_redis_empties_the_clusters_keys_and_refuses_a_wrong_password(tmp_path):
    """node_start's part: the password from its file, Ray's variables and flags, the old cluster's keys
    gone (Ray's own cleanup_redis_storage), other keys kept."""
    from rayfleet.cluster.node_start import _fresh_redis_store

    fleet = _fleet(_free_port())
    home = tmp_path / "home"
    home.mkdir()
    password = redis_store.password(fleet, tmp_path)
    port = fleet.head_recovery.redis.port
    cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
    env = dict(os.environ, REDISCLI_AUTH=password)
    try:
        assert _run(redis_store.start_script(fleet), home, password).returncode == 0
        for key in ("RAYlab@NODE", "RAYlab@JOB", "RAYother@NODE"):   # Ray's keys: RAY{namespace}@{table}
            subprocess.run(cli + ["HSET", key, "f", "v"], env=env, check=True, capture_output=True)
        plan = redis_store.plan(fleet, str(tmp_path / "head"))
        (tmp_path / "head").mkdir()
        Path(plan["password_file"]).write_text("wrong\n")
        ray_env, flags = {}, []
        problem = _fresh_redis_store(plan, ray_env, flags)
        assert "WRONGPASS" in problem and "password" in problem and flags == [], problem
        Path(plan["password_file"]).write_text(password + "\n")
        assert _fresh_redis_store(plan, ray_env, flags) == ""
        assert flags == [f"--redis-password={password}"]
        assert ray_env["RAY_REDIS_ADDRESS"] == plan["url"] and ray_env["RAY_external_storage_namespace"] == "lab"
        keys = subprocess.run(cli + ["KEYS", "*"], env=env, capture_output=True, text=True).stdout.split()
        assert keys == ["RAYother@NODE"], keys
    finally:
        _stop(fleet, home)


def test_your_own_redis_with_an_acl_user_and_a_password_file(tmp_path):
    """head_recovery.redis.url (your own Redis; here the real server with an ACL user) and password_file:
    the head logs in as that user, Ray gets --redis-username, and a wrong user is refused by name."""
    import yaml

    from rayfleet.cluster.node_start import _fresh_redis_store
    from rayfleet.config.fleet import FleetSpec
    from rayfleet.config.loader import load_model

    own = _fleet(_free_port())   # a Redis to stand for the user's own: started as rayfleet's would be
    home = tmp_path / "home"
    home.mkdir()
    admin = redis_store.password(own, tmp_path)
    port = own.head_recovery.redis.port
    try:
        assert _run(redis_store.start_script(own), home, admin).returncode == 0
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ACL", "SETUSER", "ray", "on", ">s3cret",
                        "~*", "&*", "+@all"], env=dict(os.environ, REDISCLI_AUTH=admin), check=True, capture_output=True)
        secret = tmp_path / "redis.pass"
        secret.write_text("s3cret\n")
        f = tmp_path / "fleet.yaml"
        f.write_text(yaml.safe_dump({"name": "lab", "python": "/opt/venv", "head": {"host": "127.0.0.1"},
                                     "head_recovery": {"store": "redis", "redis": {
                                         "url": f"redis://ray@127.0.0.1:{port}", "password_file": str(secret)}}}))
        spec = load_model(FleetSpec, f)
        assert redis_store.node(spec) is None   # nothing for rayfleet to run
        plan = redis_store.plan(spec, str(tmp_path / "head"))
        (tmp_path / "head").mkdir()
        Path(plan["password_file"]).write_text(redis_store.password(spec, tmp_path) + "\n")
        env, flags = {}, []
        assert _fresh_redis_store(plan, env, flags) == ""
        assert flags == ["--redis-password=s3cret", "--redis-username=ray"]
        assert env["RAY_REDIS_ADDRESS"] == f"redis://127.0.0.1:{port}"
        wrong = dict(plan, username="nobody")
        assert "WRONGPASS" in _fresh_redis_store(wrong, {}, [])
    finally:
        _stop(own, home)
