"""service.yaml validation: exact messages with file:line:col and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayfleet.config.loader import load_model
from rayfleet.config.service import ServiceSpec
from rayfleet.errors import ConfigError

pytestmark = pytest.mark.unit


def _error(tmp_path: Path, text: str) -> str:
    p = tmp_path / "service.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_model(ServiceSpec, p)
    return e.value.message.replace(str(tmp_path) + "/", "")


def test_unknown_key_suggests_the_right_one(tmp_path):
    assert _error(tmp_path, "name: en-fr\nreplcas: 2\n") == (
        "service.yaml:2:1: replcas: unknown key 'replcas' — did you mean 'replicas'?")


def test_unknown_nested_key(tmp_path):
    assert _error(tmp_path, "limits:\n  maxtexts: 3\n") == (
        "service.yaml:2:3: limits.maxtexts: unknown key 'maxtexts' — did you mean 'max_texts'?")


def test_unknown_key_without_close_match_lists_allowed(tmp_path):
    assert _error(tmp_path, "generation:\n  zzz: 1\n") == (
        "service.yaml:2:3: generation.zzz: unknown key 'zzz' — allowed keys: num_beams, max_new_tokens")


def test_wrong_type(tmp_path):
    assert _error(tmp_path, "batching:\n  max_batch_size: lots\n") == (
        "service.yaml:2:19: batching.max_batch_size: got 'lots'; "
        "input should be a valid integer, unable to parse string as an integer")


def test_out_of_range(tmp_path):
    assert _error(tmp_path, "batching:\n  max_batch_size: 0\n") == (
        "service.yaml:2:19: batching.max_batch_size: got 0; input should be greater than or equal to 1")


def test_broken_yaml(tmp_path):
    assert _error(tmp_path, "name: en-fr\nbatching: [\n  x: 1\n") == (
        "service.yaml:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'.")


def test_all_problems_reported_together(tmp_path):
    msg = _error(tmp_path, "route_prefix: en\nreplicas: {min: 3, max: 2}\nbackend: onnx\n")
    assert msg.splitlines() == [
        "service.yaml:1:15: route_prefix: got 'en'; must start with '/', e.g. '/en'",
        "service.yaml:3:10: backend: got 'onnx'; input should be 'auto', 'transformers' or 'ctranslate2'",
        "service.yaml:2:11: replicas: min (3) is larger than max (2); set min <= max",
    ]


def test_top_level_must_be_mapping(tmp_path):
    assert _error(tmp_path, "- a\n- b\n") == (
        "service.yaml: expected a mapping of keys at the top level, got list.")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_model(ServiceSpec, tmp_path / "nope.yaml")
    assert e.value.message.endswith("nope.yaml: no such file.")


def test_defaults_and_shorthand(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("replicas: 3\n")
    spec = load_model(ServiceSpec, p)
    assert (spec.name, spec.route_prefix, spec.model) == ("translator", "/", "Helsinki-NLP/opus-mt-en-fr")
    assert (spec.replicas.min, spec.replicas.max, spec.replicas.autoscaling) == (3, 3, False)
    # Serve's default max_ongoing_requests (5) would cap batches: never below the batch size.
    assert spec.max_ongoing_requests >= spec.batching.max_batch_size


def test_autoscaling_replicas(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("replicas: {min: 1, max: 3, target_ongoing_requests: 4}\n")
    assert load_model(ServiceSpec, p).replicas.autoscaling


def test_example_file_is_valid():
    spec = load_model(ServiceSpec, Path(__file__).parents[2] / "examples" / "translate.yaml")
    assert spec.backend == "auto"


def test_overrides_do_not_mutate_input(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: a\n")
    spec = load_model(ServiceSpec, p, overrides={"name": "b"})
    assert spec.name == "b"


@pytest.mark.parametrize("key,value", [("ssh:\n  user", "-oProxyCommand=x"), ("ssh:\n  user", "ray fleet"),
                                       ("ssh:\n  user", "root;reboot"), ("head:\n  host", "-gpu1"),
                                       ("head:\n  host", "gpu1 lan"), ("head:\n  host", "gpu1;ls")])
def test_fleet_user_and_hosts_go_into_commands_so_plain_names_only(tmp_path, key, value):
    """What ends up in ssh's command line and the nodes' shells: no option, space or metacharacter."""
    from rayfleet.config.fleet import FleetSpec

    p = tmp_path / "fleet.yaml"
    text = "name: lab\npython: /opt/venv\nhead:\n  host: 10.0.0.1\n"
    text = (text.replace("head:\n  host: 10.0.0.1", f"head:\n  host: {value!r}") if key.startswith("head")
            else text + f"{key}: {value!r}\n")
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_model(FleetSpec, p)
    field = "ssh.user" if key.startswith("ssh") else "head.host"
    assert e.value.message.startswith(f"{p}:{4 if field == 'head.host' else 6}:") and field in e.value.message
    p.write_text("name: lab\npython: /opt/venv\nhead:\n  host: gpu-1.lan\nssh:\n  user: ray_fleet.2\n")
    assert load_model(FleetSpec, p).ssh.user == "ray_fleet.2"


def test_auth_disabled_only_with_the_dashboard_on_loopback(tmp_path):
    from rayfleet.config.fleet import FleetSpec

    p = tmp_path / "fleet.yaml"
    base = "name: lab\npython: /opt/venv\nhead:\n  host: 10.0.0.1\nsecurity:\n  auth: disabled\n"
    p.write_text(base + "  dashboard_host: 10.0.0.1\n")
    with pytest.raises(ConfigError) as e:
        load_model(FleetSpec, p)
    print(e.value.message, e.value.hint, sep="\n")
    assert "security.auth: disabled with the dashboard on 10.0.0.1" in e.value.message
    assert "security.dashboard_host: 127.0.0.1" in e.value.message
    p.write_text(base)   # the default: the head's loopback
    spec = load_model(FleetSpec, p)
    assert spec.security.auth == "disabled" and spec.dashboard_bind == "127.0.0.1" and spec.dashboard_tunneled


def test_head_recovery_default_off_and_errors(tmp_path):
    """head_recovery: RocksDB and a supervised head by default; `off` (YAML's false) or `store: off` turn it
    off, and the node plan carries no supervisor then; an unknown store or a relative path is a clear error."""
    from rayfleet.cluster.launcher import node_plan
    from rayfleet.config.fleet import FleetSpec

    p = tmp_path / "fleet.yaml"
    base = "name: lab\npython: /opt/venv\nhead:\n  host: 10.0.0.1\n"
    p.write_text(base)
    spec = load_model(FleetSpec, p)
    assert spec.head_recovery.store == "rocksdb"
    assert node_plan(spec)["supervise"] == {"dir": "~/.rayfleet/lab/head", "store": "~/.rayfleet/lab/gcs-store",
                                            "cluster": "lab", "supervisor": "auto"}
    for off in ("head_recovery: off\n", "head_recovery:\n  store: off\n"):
        p.write_text(base + off)
        spec = load_model(FleetSpec, p)
        assert spec.head_recovery.store == "off" and node_plan(spec)["supervise"] is None
    p.write_text(base + "head_recovery:\n  path: /data/gcs\n")
    assert node_plan(load_model(FleetSpec, p))["supervise"]["store"] == "/data/gcs"
    p.write_text(base + "head_recovery:\n  store: etcd\n")
    with pytest.raises(ConfigError) as e:
        load_model(FleetSpec, p)
    assert "head_recovery.store" in e.value.message and "'rocksdb', 'redis' or 'off'" in e.value.message, e.value.message
    p.write_text(base + "head_recovery:\n  path: gcs\n")
    with pytest.raises(ConfigError) as e:
        load_model(FleetSpec, p)
    assert "head_recovery.path" in e.value.message and "~/.rayfleet/lab/gcs-store" in e.value.message
    # What runs the supervisor: systemd where the head has it (auto), or as asked; nothing to run when off
    p.write_text(base + "head_recovery:\n  supervisor: watchdog\n")
    assert node_plan(load_model(FleetSpec, p))["supervise"]["supervisor"] == "watchdog"
    for bad, words in (("  supervisor: cron\n", ["head_recovery.supervisor", "'auto', 'systemd' or 'watchdog'"]),
                       ("  store: off\n  supervisor: systemd\n", ["supervisor is set, but store is off"])):
        p.write_text(base + "head_recovery:\n" + bad)
        with pytest.raises(ConfigError) as e:
            load_model(FleetSpec, p)
        assert all(w in e.value.message for w in words), e.value.message


def test_head_recovery_on_redis_and_its_mistakes(tmp_path):
    """store: redis: rayfleet's Redis on the head (loopback) by default, on a named node (TLS with the fleet's
    certificates), or your own URL with its password in a file; each mistake named with the fix."""
    from rayfleet.cluster.launcher import node_plan
    from rayfleet.cluster.redis_store import node, password
    from rayfleet.config.fleet import FleetSpec

    p = tmp_path / "fleet.yaml"
    base = "name: lab\npython: /opt/venv\nhead:\n  host: 10.0.0.1\nworkers:\n  - host: 10.0.0.2\n"
    p.write_text(base + "head_recovery: redis\n")
    spec = load_model(FleetSpec, p)
    assert node(spec) is spec.head
    assert node_plan(spec)["supervise"] == {
        "dir": "~/.rayfleet/lab/head", "store": "", "cluster": "lab", "supervisor": "auto",
        "redis": {"url": "redis://127.0.0.1:6390", "username": "", "namespace": "lab", "env": {},
                  "password_file": "~/.rayfleet/lab/head/redis-password"}}
    p.write_text(base + "head_recovery:\n  store: redis\n  redis:\n    host: 10.0.0.2\n    port: 6390\n")
    redis = node_plan(load_model(FleetSpec, p))["supervise"]["redis"]
    assert redis["url"] == "rediss://10.0.0.2:6390"
    assert redis["env"] == {"RAY_REDIS_CA_CERT": "~/.rayfleet/lab/tls/ca.crt",
                            "RAY_REDIS_CLIENT_CERT": "~/.rayfleet/lab/tls/node.crt",
                            "RAY_REDIS_CLIENT_KEY": "~/.rayfleet/lab/tls/node.key"}
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    p.write_text(base + f"head_recovery:\n  store: redis\n  redis:\n    url: redis://ray@redis.lan:6379\n"
                        f"    password_file: {secret}\n")
    spec = load_model(FleetSpec, p)
    redis = node_plan(spec)["supervise"]["redis"]
    assert (redis["url"], redis["username"]) == ("redis://redis.lan:6379", "ray") and node(spec) is None
    assert password(spec, tmp_path) == "s3cret"
    for bad, words in [
        ("  store: redis\n  redis:\n    host: 10.0.0.9\n", ["head_recovery.redis.host is 10.0.0.9", "10.0.0.2"]),
        ("  store: redis\n  redis:\n    url: redis://:pw@redis.lan:6379\n", ["password_file"]),
        ("  store: redis\n  redis:\n    url: http://redis.lan\n", ["not a Redis URL", "redis://HOST:PORT"]),
        ("  store: redis\n  redis:\n    url: redis://r:1\n    host: 10.0.0.2\n", ["either host", "or url"]),
        ("  store: redis\n  redis:\n    url: redis://r:1\n    password_file: /nonexistent\n",
         ["/nonexistent does not exist on this machine"]),
        ("  redis:\n    port: 6390\n", ["redis is set, but store is rocksdb", "store: redis"]),
        ("  store: redis\n  path: /data/gcs\n", ["path is RocksDB's directory", "store is redis"]),
        ("  store: redis\n  redis:\n    port: 6379\n", ["head_recovery.redis.port 6379 is also ports.gcs"]),
    ]:
        p.write_text(base + "head_recovery:\n" + bad)
        with pytest.raises(ConfigError) as e:
            load_model(FleetSpec, p)
        text = e.value.message + " " + (e.value.hint or "")
        assert all(w in text for w in words), (bad, text)


def test_monitoring_in_fleet_yaml_and_its_mistakes(tmp_path):
    """monitoring: off by default, `monitoring: true` shorthand, the head's command says what to run there;
    a port Ray uses, or a retention Prometheus can't read, named with the fix."""
    from rayfleet.cluster.fleet_monitoring import _monitoring_command
    from rayfleet.config.fleet import FleetSpec

    p = tmp_path / "fleet.yaml"
    base = "name: lab\npython: /opt/venv\nhead:\n  host: 10.0.0.1\n"
    p.write_text(base)
    spec = load_model(FleetSpec, p)
    assert not spec.monitoring.enabled
    assert _monitoring_command(spec) == ('/opt/venv/bin/python -m rayfleet.cluster.monitoring stop '
                                         '"$HOME"/.rayfleet/lab/prometheus')   # off: one that ran is stopped
    p.write_text(base + "monitoring: true\n")
    spec = load_model(FleetSpec, p)
    assert (spec.monitoring.enabled, spec.monitoring.port, spec.monitoring.retention) == (True, 9090, "7d")
    cmd = _monitoring_command(spec)
    assert cmd.startswith("/opt/venv/bin/python -m rayfleet.cluster.monitoring ensure ")
    assert '"sd": "/tmp/rayfleet/prom_metrics_service_discovery.json"' in cmd and '"port": 9090' in cmd
    for bad, words in [
        ("monitoring:\n  enabled: true\n  port: 6379\n", ["monitoring.port 6379 is also ports.gcs"]),
        ("monitoring:\n  enabled: true\n  port: 10500\n", ["monitoring.port 10500 is also ports.min_worker..max_worker"]),
        ("monitoring:\n  retention: a week\n", ["'a week' is not a Prometheus duration", "7d"]),
    ]:
        p.write_text(base + bad)
        with pytest.raises(ConfigError) as e:
            load_model(FleetSpec, p)
        text = e.value.message + " " + (e.value.hint or "")
        assert all(w in text for w in words), (bad, text)
