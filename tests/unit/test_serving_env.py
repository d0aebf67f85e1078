"""The Serve settings every rayfleet cluster starts with (cluster/serving.py)."""

import pytest

from rayfleet.cluster.serving import replica_port_ranges, serve_env
from rayfleet.cluster.state import LocalPorts
from rayfleet.config.fleet import PortsSpec
from rayfleet.errors import ClusterError

pytestmark = pytest.mark.unit


def _used(env: dict) -> list[int]:
    ports = [int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])]
    for proto in ("HTTP", "GRPC"):
        lo, hi = (int(env[f"RAY_SERVE_DIRECT_INGRESS_{b}_{proto}_PORT"]) for b in ("MIN", "MAX"))
        assert lo <= hi
        ports += range(lo, hi + 1)
    return ports


@pytest.mark.parametrize("lo,hi", [(30000, 31999), (23000, 23003), (23000, 23004), (40000, 40199)])
def test_the_range_is_split_without_overlap_or_gaps(lo, hi):
    env = serve_env(lo, hi)
    used = _used(env)
    assert sorted(used) == list(range(lo, hi + 1))  # every port once, nothing outside the range
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # A replica that died before answering is retried on another one.
    assert "empty-response" in env["RAY_SERVE_HAPROXY_RETRY_ON"].split()


def test_default_range_halves():
    (http_lo, http_hi), (grpc_lo, grpc_hi) = replica_port_ranges(30000, 31999)
    assert (http_lo, http_hi, grpc_lo, grpc_hi) == (30002, 30999, 31000, 31999)


def test_too_small_a_range_is_refused_with_the_flag_names():
    with pytest.raises(ValueError):
        replica_port_ranges(30000, 30002)
    with pytest.raises(ClusterError, match="--min-replica-port"):
        LocalPorts(min_replica=30000, max_replica=30002).check()
    with pytest.raises(ClusterError, match="overlaps the worker port range"):
        LocalPorts(min_worker=10002, max_worker=19999, min_replica=19000, max_replica=20999).check()
    with pytest.raises(ClusterError, match="inside the Serve replica port range"):
        LocalPorts(serve=30010).check()
    with pytest.raises(ValueError, match="overlaps the worker port range"):
        PortsSpec(min_worker=10002, max_worker=10999, min_replica=10500, max_replica=11500)
