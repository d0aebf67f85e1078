"""Clients an open office network may hold: bodies over the limit (declared or chunked), hostile
JSON, hundreds of slow connections, and a local user poking at HAProxy's files. Against the
session translator (``max_body_bytes`` 4096) and one with the default limits, through HAProxy.

Cost: ~1 min on 2 cores (one extra deploy, a 15 s slow-client run).
"""

from __future__ import annotations

import os
import selectors
import socket
import statistics
import subprocess
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from rayfleet.serve.app import BODY_TIMEOUT_S
from rayfleet.serve.deploy import delete_service, deploy, model_replicas

pytestmark = pytest.mark.integration

MB = 1 << 20


def _addr(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return u.hostname, u.port


def _read(sock: socket.socket, timeout_s: float, until: bytes = b"\r\n") -> bytes:
    """What comes on ``sock`` until ``until`` (or the end, or ``timeout_s``)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while until not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def _read_status(sock: socket.socket, timeout_s: float) -> str:
    """The status line of the answer on ``sock`` (empty if none came within ``timeout_s``)."""
    return _read(sock, timeout_s).split(b"\r\n", 1)[0].decode(errors="replace")


def _peak_rss_reset(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:   # 5: reset the peak resident set (VmHWM)
        f.write("5")


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))


@pytest.fixture(scope="module")
def stalled(translator):
    """Two requests whose body stops half-way, sent when the module starts and checked by its last test,
    once the service's body timeout has passed (so the module waits for it only once)."""
    _, url = translator
    socks = []
    for _ in range(2):
        s = socket.create_connection(_addr(url), timeout=10)
        s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 40\r\n\r\n" b'{"text": "half')
        socks.append(s)
    yield socks, time.monotonic()
    for s in socks:
        s.close()


@pytest.mark.parametrize("declared", [4097, 2_000_000_000])   # the limit + 1; 2 GB
def test_a_declared_body_over_the_limit_is_refused_at_once(translator, declared, stalled):
    _, url = translator
    with socket.create_connection(_addr(url), timeout=10) as s:
        s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % declared)     # announced, nothing sent
        started = time.monotonic()
        answer = _read(s, 10, until=b"}")
    print(f"Content-Length {declared}, no body: {answer[:200]!r} after {time.monotonic() - started:.2f} s")
    assert answer.startswith(b"HTTP/1.1 413")
    assert f'"request body is {declared} bytes; the limit is 4096 bytes"'.encode() in answer


def test_a_chunked_body_is_refused_when_it_crosses_the_limit_and_memory_stays_flat(translator, serve_target):
    _, url = translator
    pids = [r.pid for r in model_replicas(serve_target, "translator") if r.state.value == "RUNNING"]
    assert pids
    for pid in pids:
        _peak_rss_reset(pid)
    before = {pid: _peak_rss(pid) for pid in pids}
    sent = 0
    chunk = b"x" * (64 * 1024)
    with socket.create_connection(_addr(url), timeout=30) as s:
        s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(_read_status(s, 60)))
        reader.start()
        try:
            while sent < 300 * MB and not answer:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:
            pass   # the server answered and closed: the rest is not read
        reader.join(60)
    growth = {pid: _peak_rss(pid) - before[pid] for pid in pids}
    print(f"chunked body: {sent / MB:.1f} MB sent before {answer}; replicas' peak memory grew "
          f"{', '.join(f'{g / MB:.1f} MB' for g in growth.values())}")
    assert answer and answer[0].startswith("HTTP/1.1 413")
    assert all(g < 50 * MB for g in growth.values())


@pytest.fixture(scope="module")
def defaults(serve_target, tiny_model):
    """The tiny model with the default limits (1 MB bodies, 64 texts)."""
    from rayfleet.config.service import ServiceSpec

    spec = ServiceSpec(name="defaults", route_prefix="/defaults", model=str(tiny_model), backend="transformers",
                       generation={"max_new_tokens": 16})
    status = deploy(serve_target, spec, [], timeout_s=300)
    try:
        yield status.url
    finally:
        delete_service(serve_target, spec.name, wait=False)


HOSTILE = {
    "nested 100k deep": b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "NaN": b'{"text": NaN}',
    "invalid UTF-8": b'{"text": "caf\xc3\x28 \xff"}',
    "300k texts": b'{"texts": [' + b",".join([b'"a"'] * 300_000) + b"]}",
    "200k texts under 1 MB": b'{"texts": [' + b",".join([b'"a"'] * 200_000) + b"]}",
    "a lone surrogate": b'{"text": "\\ud800"}',
    "a number as big as the body": b'{"text": 1' + b"0" * 900_000 + b"}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_json_is_a_4xx_never_a_5xx(defaults, name):
    body = HOSTILE[name]
    r = httpx.post(f"{defaults}/translate", content=body, headers={"content-type": "application/json"}, timeout=120)
    print(f"{name} ({len(body)} bytes): {r.status_code} {r.text[:120]}")
    assert 400 <= r.status_code < 500, r.text[:300]
    ok = httpx.post(f"{defaults}/translate", json={"text": "Hello."}, timeout=60)
    assert ok.status_code == 200


def test_slow_clients_do_not_stop_normal_ones(translator):
    """250 connections that send their headers a byte at a time and 250 that send a declared body a
    byte at a time, for 15 s: normal clients meanwhile all get answers."""
    _, url = translator
    host, port = _addr(url)
    sel = selectors.DefaultSelector()
    slow: list[tuple[socket.socket, bytes]] = []
    headers = b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for i in range(500):
        s = socket.create_connection((host, port), timeout=10)
        s.setblocking(False)
        if i % 2:   # slow body: the headers complete, then the body drips
            s.sendall(headers + b"Content-Length: 1000\r\n\r\n")
            slow.append((s, b'{"text": "' + b"a" * 990))
        else:       # slow headers
            slow.append((s, b"X-Slow: " + b"a" * 1000))
        sel.register(s, selectors.EVENT_READ)
    stop = threading.Event()
    closed = [0]

    def drip() -> None:
        at = 0
        while not stop.is_set():
            for s, rest in slow:
                if s.fileno() >= 0 and at < len(rest):
                    try:
                        s.send(rest[at:at + 1])
                    except OSError:
                        closed[0] += 1
                        s.close()
            at += 1
            stop.wait(2)

    latencies: list[float] = []
    failures: list[str] = []

    def normal() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = client.post(f"{url}/translate", json={"text": "Hello world."})
                    if r.status_code == 200:
                        latencies.append(time.monotonic() - started)
                    else:
                        failures.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=drip)] + [threading.Thread(target=normal) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(15)
    stop.set()
    for t in threads:
        t.join(90)
    answered = {}
    for key, _ in sel.select(timeout=0):
        try:
            line = key.fileobj.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as e:
            line = type(e).__name__
        answered[line] = answered.get(line, 0) + 1
    for s, _ in slow:
        s.close()
    total = len(latencies) + len(failures)
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else float("nan")
    print(f"500 slow connections for 15 s: normal clients {len(latencies)}/{total} answered "
          f"({100 * len(latencies) / max(total, 1):.1f}%), p99 {p99 * 1000:.0f} ms; slow ones closed by the "
          f"server: {closed[0]}, answers they got: {answered}; failures: {failures[:3]}")
    assert not failures and len(latencies) >= 20, "slow clients stopped the normal ones"


def test_haproxy_files_are_private_to_the_cluster_user(local_cluster, translator):
    from rayfleet.cluster.serving import haproxy_dir

    hp = haproxy_dir(local_cluster.temp_dir)
    st = os.stat(hp)
    assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o700)
    sockets = [os.path.join(d, f) for d, _, files in os.walk(hp) for f in files if f == "admin.sock"]
    assert sockets, f"no admin socket under {hp}"
    if os.geteuid() != 0:
        pytest.skip("trying the socket as another user needs root")
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e:\n    print(type(e).__name__)\n")
    r = subprocess.run(["/usr/bin/python3", "-c", probe, sockets[0]], user=65534, capture_output=True, text=True,
                       timeout=30)
    print(f"another user ({65534}) on {sockets[0]}: {r.stdout.strip()} {r.stderr.strip()[-200:]}")
    assert r.stdout.strip() == "PermissionError"


def test_a_stalled_body_gets_the_services_json_408(stalled):
    """Not HAProxy's HTML 400: its client timeout is longer than the service's body timeout."""
    socks, opened = stalled
    wait = opened + BODY_TIMEOUT_S + 5 - time.monotonic()
    answers = [_read(s, max(wait, 1), until=b"}") for s in socks]
    print(f"a body stalled half-way: {[a[-120:] for a in answers]} ({time.monotonic() - opened:.1f} s after it "
          "was sent)")
    for a in answers:
        assert a.startswith(b"HTTP/1.1 408"), a[:300]
        assert b"application/json" in a and b'"the request body did not arrive within 30 s"' in a, a
