"""rayfleet's client sends a request once more when its connection closed before the whole answer:
none of it, or headers without their body (a replica killed while answering). A real socket server
on loopback plays the dying replica, then the replacement."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from rayfleet.client import translate_detailed
from rayfleet.errors import ClientError

pytestmark = pytest.mark.unit

BODY = json.dumps({"translation": "Bonjour."}).encode()
FULL = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Model-Version: v1\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)) + BODY
CUT = FULL[:FULL.index(b"\r\n\r\n") + 4]      # the headers, then the connection closes
NOTHING = b""                                 # closed before any byte


def _server(answers: list[bytes]) -> tuple[str, list[bytes]]:
    """Answers the n-th connection with answers[n] (after reading its request); returns its URL."""
    srv = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def run() -> None:
        for answer in answers:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                    data += conn.recv(65536)
                requests.append(data)
                conn.sendall(answer)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", requests


@pytest.mark.parametrize("first", [CUT, NOTHING], ids=["headers-without-body", "no-answer"])
def test_a_cut_off_or_missing_answer_is_asked_for_once_more(first):
    url, requests = _server([first, FULL])
    result = translate_detailed(url, ["Hello."], timeout_s=10)
    assert (result.translations, result.version, result.resent) == (["Bonjour."], "v1", 1)
    assert len(requests) == 2 and requests[0] == requests[1]  # the same request, sent again


def test_twice_cut_off_is_a_clear_error():
    url, _ = _server([CUT, CUT])
    with pytest.raises(ClientError) as e:
        translate_detailed(url, ["Hello."], timeout_s=10)
    assert e.value.message.startswith(f"{url}/translate closed the connection twice without answering: ")
