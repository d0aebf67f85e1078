"""The wire search of the secrets-on-the-wire test (rayfleet/testing/capture.py), on a real tcpdump of
loopback: a secret sent as text, split across two TCP segments, or Huffman-coded in an HTTP/2 header
block is found; a stream without it is not."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from rayfleet.testing.capture import Capture, forms, search

pytestmark = pytest.mark.unit

SECRET = b"Bearer 3f1c9a7be0d24c55a8e6b1f0c2d9e4a7"


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump missing (./test installs it)")
def test_a_secret_is_found_as_text_split_or_huffman_coded(tmp_path):
    import hpack

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def serve():
        for _ in range(4):
            c, _ = srv.accept()
            with c:
                while data := c.recv(65536):
                    got.append(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def send(*parts: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for p in parts:
                s.sendall(p)
                time.sleep(0.05)   # its own segment

    with Capture("lo", tmp_path / "lo.pcap", f"tcp port {port}") as cap:
        send(b"GET / HTTP/1.1\r\nAuthorization: " + SECRET + b"\r\n\r\n")
        send(b"xx" + SECRET[:12], SECRET[12:] + b"yy")
        send(hpack.Encoder().encode([("authorization", SECRET.decode())], huffman=True))
        send(b"nothing to see here " * 50)
        time.sleep(0.3)
        summary = cap.stop()
    assert "packets captured" in summary
    rep = search(tmp_path / "lo.pcap", {"token": forms(SECRET)})
    print(rep.summary)
    assert rep.flows >= 4 and rep.tcp_packets > 8
    assert sorted(f.count for f in rep.found) == [1, 1, 1], rep.summary   # 3 of the 4 client->server streams
    assert search(tmp_path / "lo.pcap", {"other": forms(b"Bearer 000000000000000000000")}).found == []
    assert len(search(tmp_path / "lo.pcap", {"text only": [SECRET]}).found) == 2   # not the Huffman-coded one
