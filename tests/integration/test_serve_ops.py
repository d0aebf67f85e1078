"""Operating a service under load: in-place updates, autoscaling, a killed replica.

Each test runs a bounded closed-loop load (a few client threads on loopback) and
asserts that not one request failed while the service changed under it; next to the
load, rayfleet's own client runs in a loop (``rayfleet translate`` in a subprocess, and
``rayfleet.client`` in a thread) and must not fail either.

The clients behave like rayfleet's own client (``rayfleet.client``): a request is one
write (headers and body), and a request whose connection was closed before the whole
response (none of it: a keep-alive connection HAProxy closed on a reload; or headers
without their body: a replica killed while answering) is sent again on a new
connection. That is what Ray 2.60's HAProxy mode needs from clients; see "A replica
dies" in README.md.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from rayfleet import client
from rayfleet.config.service import ServiceSpec
from rayfleet.serve.app import VERSION_HEADER
from rayfleet.serve.deploy import delete_service, deploy, model_replicas
from rayfleet.testing.load import Load, _Threads
from rayfleet.testing.tiny_model import SAMPLE_TEXTS

from conftest import rayfleet_cli

pytestmark = pytest.mark.integration


@dataclass
class OwnClient(_Threads):
    """rayfleet's own client in a loop: ``rayfleet translate --url`` (the CLI, a new process each
    time) in one thread, ``rayfleet.client.translate_detailed`` back to back in another."""

    url: str
    cli_runs: list[tuple[int, str]] = field(default_factory=list)   # (exit code, output)
    calls: int = 0
    resent: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _cli(self) -> None:
        while not self._stop.is_set():
            r = rayfleet_cli("translate", "--url", self.url, SAMPLE_TEXTS[len(self.cli_runs) % 8], timeout=180)
            self.cli_runs.append((r.returncode, (r.stdout + r.stderr).strip()))

    def _python(self) -> None:
        while not self._stop.is_set():
            try:
                result = client.translate_detailed(self.url, SAMPLE_TEXTS[:2], timeout_s=120)
                self.resent += result.resent
            except Exception as e:  # noqa: BLE001 - every failure counts, whatever it is
                self.errors.append(f"{type(e).__name__}: {e}")
            self.calls += 1

    _join_s = 200.0

    def _targets(self) -> list:
        return [self._cli, self._python]

    def check(self) -> None:
        failed = [out for code, out in self.cli_runs if code != 0]
        print(f"rayfleet translate: {len(self.cli_runs)} runs, {len(failed)} failed; python client: "
              f"{self.calls} calls, {len(self.errors)} failed, {self.resent} resent after a connection "
              "closed unanswered")
        assert failed == [] and self.errors == [], (failed[:3], self.errors[:3])
        assert len(self.cli_runs) >= 2 and self.calls >= 5
        assert self.resent <= self.calls


def _wait(what: str, predicate, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)


def _running(serve_target, name: str) -> list[dict]:
    return [r for r in model_replicas(serve_target, name) if r.state.value == "RUNNING"]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """Another tiny model (other seed): its translations differ from the first's."""
    from rayfleet.testing.tiny_model import build_tiny_marian

    return build_tiny_marian(tmp_path_factory.mktemp("tiny-b") / "model", seed=1)


def _translate_all(url: str) -> list[str]:
    r = httpx.post(f"{url}/translate", json={"texts": SAMPLE_TEXTS[:8]}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["translations"]


def test_update_in_place_under_load_fails_nothing(local_cluster, serve_target, tiny_model, second_model, tmp_path):
    """`rayfleet serve` with another model and version: no failed request; answers switch over."""
    spec_a = ServiceSpec(name="upd", route_prefix="/upd", model=str(tiny_model), version="a",
                         generation={"max_new_tokens": 32})
    url = deploy(serve_target, spec_a, [], timeout_s=300).url
    try:
        out_a = _translate_all(url)
        yaml = tmp_path / "upd.yaml"
        yaml.write_text(f"name: upd\nroute_prefix: /upd\nmodel: {second_model}\nversion: b\n"
                        "generation: {max_new_tokens: 32}\n")
        with Load(url, clients=4) as load, OwnClient(url) as own:
            load.wait_for(20)
            t0 = time.monotonic()
            r = rayfleet_cli("serve", str(yaml))
            print(f"update took {time.monotonic() - t0:.1f} s under load")
            assert r.returncode == 0, r.stdout + r.stderr
            load.wait_for(20)  # the new version serves the load, too
        assert load.errors == [], load.errors[:5]
        own.check()
        print(f"{load.count()} requests, 0 failed; {load.resent} resent after their connection closed unanswered")
        versions = [v for _, _, v, _ in sorted(load.results)]
        print(f"{len(versions)} requests during the update, by version: {Counter(versions)}")
        assert versions[0] == "a" and versions[-1] == "b"
        # Once the new version answered, the old one is gone for good: a clean switch, not a mix at the end.
        first_b = versions.index("b")
        assert set(versions[first_b:][-20:]) == {"b"}
        out_b = _translate_all(url)
        assert out_b != out_a  # the other model really serves now
        info = httpx.get(f"{url}/info", timeout=60)
        assert info.json()["version"] == "b" and info.headers[VERSION_HEADER] == "b"
        assert info.json()["model"] == str(second_model)
    finally:
        delete_service(serve_target, "upd", wait=False)   # its replicas drain beside the next test's


def test_autoscaling_and_a_killed_replica_under_load(local_cluster, serve_target, tiny_model):
    """min 1 / max 2: load adds a replica; killing one under load fails no request and it is
    replaced; idleness returns the service to one replica."""
    spec = ServiceSpec(
        name="auto", route_prefix="/auto", model=str(tiny_model), backend="transformers",
        replicas={"min": 1, "max": 2, "target_ongoing_requests": 1, "upscale_delay_s": 1, "downscale_delay_s": 3},
        generation={"max_new_tokens": 32},
    )
    url = deploy(serve_target, spec, [], timeout_s=300).url
    try:
        assert len(_running(serve_target, "auto")) == 1
        with Load(url, clients=6, texts_per_request=8) as load, OwnClient(url) as own:
            t0 = time.monotonic()
            two = _wait("a second replica under load", lambda: (lambda rs: rs if len(rs) == 2 else None)(
                _running(serve_target, "auto")), timeout=120)
            print(f"scaled up to 2 replicas {time.monotonic() - t0:.1f} s after the load started")
            load.wait_for(10)
            pids = {r.pid for r in two}
            victim = sorted(pids)[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = load.count()
            t0 = time.monotonic()
            after = _wait("a replacement replica",
                          lambda: (lambda rs: rs if len(rs) == 2 and victim not in {r.pid for r in rs} else None)(
                              _running(serve_target, "auto")), timeout=120)
            print(f"replica {victim} killed under load; replaced in {time.monotonic() - t0:.1f} s "
                  f"by {sorted({r.pid for r in after} - pids)}")
            load.wait_for(10)
        assert load.count() > killed_at + 10
        assert load.errors == [], load.errors[:5]
        own.check()
        print(f"{load.count()} requests, 0 failed; {load.resent} resent after their connection closed unanswered")
        t0 = time.monotonic()
        _wait("back to one replica when idle",   # one RUNNING; the other drains (Serve's STOPPING, 10 s)
              lambda: len(_running(serve_target, "auto")) == 1, timeout=120)
        print(f"scaled down to 1 replica {time.monotonic() - t0:.1f} s after the load stopped")
    finally:
        delete_service(serve_target, "auto")
