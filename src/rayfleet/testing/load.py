"""A bounded closed-loop load on a translation service, for tests: client threads that POST to
/translate back to back and record every answer, like rayfleet's own client (one write per request;
a request whose connection closed before any response is sent again once, on a new connection)."""

from __future__ import annotations

import functools
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rayfleet.serve.app import VERSION_HEADER
from rayfleet.testing.tiny_model import SAMPLE_TEXTS

__all__ = ["Load"]


class _Threads:
    """A context manager that runs ``_targets()`` in daemon threads until ``__exit__`` sets ``_stop``."""

    _stop: threading.Event
    _threads: list[threading.Thread]
    _join_s = 150.0

    def _targets(self) -> list:
        raise NotImplementedError

    def __enter__(self):
        self._threads = [threading.Thread(target=t, daemon=True) for t in self._targets()]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self._join_s)


@dataclass
class Load(_Threads):
    """``clients`` threads POST to /translate back to back until stopped."""

    url: str
    clients: int = 4
    texts_per_request: int = 1
    results: list[tuple[float, int, str, str]] = field(default_factory=list)  # (t, status, version, body)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)   # seconds, of the requests answered 200
    resent: int = 0  # requests sent again because their connection closed before any response
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _post(self, conn: http.client.HTTPConnection | None, path: str, body: bytes):
        """(connection to reuse, row). One resend when the connection closed before any response."""
        u = urlsplit(self.url)
        for attempt in range(2):
            conn = conn or http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                text = r.read().decode(errors="replace")
                return conn, (time.monotonic(), r.status, r.getheader(VERSION_HEADER) or "", text)
            except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError,
                    BrokenPipeError) as e:
                conn.close()
                conn = None
                if attempt == 0:
                    with self._lock:
                        self.resent += 1
                    continue
                return None, (time.monotonic(), 0, "", f"{type(e).__name__}: {e}")
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                return None, (time.monotonic(), 0, "", f"{type(e).__name__}: {e}")
        raise AssertionError("unreachable")

    def _client(self, k: int) -> None:
        i = k
        conn = None
        path = urlsplit(self.url).path + "/translate"
        while not self._stop.is_set():
            texts = [SAMPLE_TEXTS[(i + j) % len(SAMPLE_TEXTS)] for j in range(self.texts_per_request)]
            i += 1
            sent = time.monotonic()
            conn, row = self._post(conn, path, json.dumps({"texts": texts}).encode())
            with self._lock:
                self.results.append(row)
                if row[1] == 200:
                    self.latencies.append(row[0] - sent)
                if row[1] != 200:
                    self.errors.append(f"{row[1]} {row[3][:300]}")
        if conn is not None:
            conn.close()

    def _targets(self) -> list:
        return [functools.partial(self._client, k) for k in range(self.clients)]

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        start = self.count()
        while self.count() < start + n:
            assert time.monotonic() < deadline, f"load made only {self.count() - start} of {n} requests"
            time.sleep(0.1)
