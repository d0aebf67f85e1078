"""What a host of the fleet answers to someone on the LAN who holds no credentials.

``listening(ss_output)`` reads ``ss -ltnpH`` (run on the host) into the sockets that listen on
an address other hosts can reach (not loopback). ``python -m rayfleet.testing.doors JSON`` is
run on *another* host with ``[[address, port], ...]`` and prints one JSON object per socket:
``{"address", "port", "answer", "open"}``, where ``open`` means it did something for a
caller without a token:

- HTTP: ``GET`` of a few paths a snoop would try (``/``, ``/metrics``, ``/stats``,
  ``/api/version``, ``/api/jobs/``); a 2xx for any of them is open; 401/403 everywhere
  is "token required"; other errors are reported with the path that gave them;
- else gRPC: one read-only method of each of Ray's services with an empty request and no
  token; ``UNAUTHENTICATED`` is "token required", ``OK`` (or any error from the method
  itself) is open; ``UNIMPLEMENTED`` for every method says "gRPC, none of Ray's services";
- else TLS (Ray's gRPC with ``security.tls``): a handshake without a client certificate; a server
  that then refuses (wants a certificate of the fleet's CA) is "TLS: client certificate required",
  one that talks on is open;
- else what the socket did: closed, stayed silent, or sent bytes that are neither.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from dataclasses import dataclass

__all__ = ["Listening", "listening", "probe"]

HTTP_PATHS = ("/", "/metrics", "/stats", "/api/version", "/api/jobs/")
GRPC_METHODS = (   # read-only (Pull of no object), tried in this order; the health check last
    "/ray.rpc.NodeInfoGcsService/GetClusterId",
    "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.CoreWorkerService/NumPendingTasks",
    "/ray.rpc.ObjectManagerService/Pull",   # the object manager has Push and Pull only (Ray 2.60)
    "/ray.rpc.ReporterService/HealthCheck",
    "/ray.rpc.RayletDriver/ClusterInfo",
    "/grpc.health.v1.Health/Check",
)
_SS = re.compile(r"^LISTEN\s+\d+\s+\d+\s+(\S+):(\d+)\s+\S+\s*(.*)$")


@dataclass(frozen=True)
class Listening:
    address: str    # as ss prints it: an address, '*', '0.0.0.0' or '[::]'
    port: int
    process: str    # the program's name ('?' when ss can't say)

    @property
    def loopback(self) -> bool:
        a = self.address.strip("[]").removeprefix("::ffff:")
        return a.startswith("127.") or a in ("::1", "localhost")


def listening(ss_output: str) -> list[Listening]:
    """The TCP sockets of ``ss -ltnpH`` output that listen on a non-loopback address."""
    out = []
    for line in ss_output.splitlines():
        m = _SS.match(line.strip())
        if not m:
            continue
        name = re.search(r'users:\(\("([^"]+)"', m[3])
        sock = Listening(m[1], int(m[2]), name[1] if name else "?")
        if not sock.loopback:
            out.append(sock)
    return out


def _http(address: str, port: int, path: str, timeout_s: float) -> tuple[str, bytes]:
    """('http', status line) / ('closed'|'silent'|'bytes'|'refused', first bytes)."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            try:
                while len(data) < 512:
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                pass
    except ConnectionRefusedError:
        return "refused", b""
    except OSError as e:
        return "closed", str(e).encode()
    if data.startswith(b"HTTP/"):
        return "http", data.split(b"\r\n", 1)[0]
    return ("bytes", data[:16]) if data else ("silent", b"")


def _grpc(address: str, port: int, timeout_s: float) -> str | None:
    """The first gRPC status of GRPC_METHODS other than UNIMPLEMENTED, 'UNIMPLEMENTED' if all are,
    None if the socket does not speak gRPC."""
    import grpc

    with grpc.insecure_channel(f"{address}:{port}") as channel:
        codes = []
        for method in GRPC_METHODS:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                call(b"", timeout=timeout_s)
                return f"OK {method}"
            except grpc.RpcError as e:
                code = e.code().name
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and not codes:
                return None   # not gRPC (or not answering at all)
            codes.append(code)
            if code != "UNIMPLEMENTED":
                return f"{code} {method}"
        return "UNIMPLEMENTED"


def _tls(address: str, port: int, timeout_s: float) -> str | None:
    """'certificate required' (TLS, refused without a client certificate), 'open' (TLS, talked on without
    one), None (not TLS)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as raw, ctx.wrap_socket(raw) as s:
            # TLS 1.3: the server checks the client's certificate after the handshake; the refusal
            # comes with the first read.
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            return "open" if s.recv(64) else "certificate required"
    except ssl.SSLError as e:
        reason = (e.reason or "").upper()
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            return "certificate required"
        return None
    except (OSError, socket.timeout):
        return None


def probe(address: str, port: int, timeout_s: float = 3.0) -> tuple[str, bool]:
    """(what the socket answered, whether that is open to a caller without credentials)."""
    answers = []
    for path in HTTP_PATHS:
        kind, first = _http(address, port, path, timeout_s)
        if kind != "http":
            break
        status = int(first.split()[1])
        answers.append((path, status))
        if 200 <= status < 300:
            return f"HTTP {status} at {path} without credentials", True
    if answers:
        statuses = sorted({s for _, s in answers})
        if all(s in (401, 403) for s in statuses):
            return f"HTTP {'/'.join(map(str, statuses))}: token required", False
        if all(s == 404 for s in statuses):
            return "HTTP 404 for every path tried", False
        return "HTTP " + ", ".join(f"{s} at {p}" for p, s in answers), False   # errors only: nothing given
    if kind == "refused":
        return "refused", False
    tls = _tls(address, port, timeout_s)
    if tls is not None:
        return ("TLS: client certificate required", False) if tls == "certificate required" else \
            ("TLS without a client certificate", True)
    grpc_status = _grpc(address, port, timeout_s)
    if grpc_status is not None:
        if grpc_status.startswith("UNAUTHENTICATED"):
            return f"gRPC: token required ({grpc_status.split()[1]})", False
        if grpc_status == "UNIMPLEMENTED":
            return "gRPC, none of Ray's services", False
        return f"gRPC without a token: {grpc_status}", True
    return {"closed": "closed at once", "silent": "silent",
            "bytes": f"non-HTTP bytes {first!r}"}[kind], kind == "bytes"


def main(argv: list[str]) -> int:
    for address, port in json.loads(argv[0]):
        answer, is_open = probe(address, int(port))
        print(json.dumps({"address": address, "port": int(port), "answer": answer, "open": is_open}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
