"""Monitoring on the local cluster: the machine's own Prometheus (the distribution's package), started by
`rayfleet up --local --monitoring` beside the running session cluster, scraping what Ray's
service-discovery file lists; what it reports after a bounded load matches what the load measured."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import SESSION_PORTS, rayfleet_cli, up_flags
from rayfleet.cluster import local
from rayfleet.cluster import top
from rayfleet.cluster.serving import LATENCY_BUCKETS_MS
from rayfleet.serve.metrics import NAMES
from rayfleet.testing.load import Load

pytestmark = pytest.mark.integration

def _query(base: str, promql: str) -> list[dict]:
    r = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def _value(base: str, promql: str) -> float | None:
    result = _query(base, promql)
    return float(result[0]["value"][1]) if result else None


def _settled(base: str, queries: list[str], timeout: float = 90,
             reached: dict[str, float] | None = None) -> dict[str, float]:
    """Each query's value once every one is at least ``reached``'s, or else once two reads 12 s apart agree
    for all (Ray's agents export every ~10 s)."""
    deadline = time.monotonic() + timeout
    last: dict[str, float | None] = {}
    last_t = 0.0
    while True:
        now = {q: _value(base, q) for q in queries}
        if None not in now.values():
            if reached and all(now[q] >= v for q, v in reached.items()):
                return now
            if now == last and time.monotonic() - last_t >= 12:
                return now
        assert time.monotonic() < deadline, f"did not settle: {last} then {now}"
        if now != last:
            last, last_t = now, time.monotonic()
        time.sleep(3)


def test_without_monitoring_metrics_says_how_to_turn_it_on(local_cluster):
    if local.current().prometheus_port:
        pytest.skip("the session's Prometheus already runs (started by a module that ran before)")
    r = rayfleet_cli("metrics", "url")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: The local cluster runs no Prometheus.",
        "hint: Start it with: rayfleet up --local --monitoring   (the running cluster keeps running; Prometheus "
        "is added)"]


def test_a_missing_prometheus_is_named_before_anything_changes(local_cluster):
    running = local.current().prometheus_port
    r = rayfleet_cli("up", "--local", "--monitoring", "--prometheus-path", "/nonexistent/prometheus",
                     *up_flags(SESSION_PORTS))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == ("error: --monitoring needs Prometheus on this machine: /nonexistent/prometheus "
                                        "is not an executable file.")
    assert "apt install prometheus" in r.stderr
    assert "Traceback" not in r.stderr
    assert local.current().prometheus_port == running and local.is_alive(local_cluster)
    r = rayfleet_cli("up", "--local", "--monitoring", "--retention", "a week", *up_flags(SESSION_PORTS))
    assert r.returncode == 1 and "error: --retention 'a week' is not a duration." in r.stderr


def _top_row(out: str, service: str) -> list[str]:
    """The cells of ``service``'s row in rayfleet top's services table."""
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == service:
            return cells
    raise AssertionError(f"no row for {service}:\n{out}")


def test_top_without_prometheus_reads_every_nodes_metrics_itself(local_cluster, translator):
    """`rayfleet top` with stdout not a terminal: one view, from the nodes' own metrics endpoints (the local
    cluster runs no Prometheus yet), with the translator's request rate while a load runs."""
    _, url = translator
    with Load(url.rstrip("/"), clients=2) as load:
        load.wait_for(10)
        time.sleep(12)   # a report of Ray's metrics agents (every ~10 s) within the view's window
        r = rayfleet_cli("top", "--interval", "12", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "node metrics endpoint(s)" in r.stdout, r.stdout
    row = _top_row(r.stdout, "translator")
    assert float(row[1]) > 0 and row[8] == "1", r.stdout
    assert re.search(r"^ *[\d.]+ +\d+ +\d+ +[\d.]+/[\d.]+ ", r.stdout, re.M), r.stdout   # the node: CPU, memory


def test_top_on_a_terminal_is_live_and_quits_on_q(prometheus, translator, tmp_path):
    """`rayfleet top` in a real 80-column terminal (tmux, a server of the test's own): it refreshes from Prometheus,
    shows the service's rate under load, and quits on q."""
    _, url = translator
    sock = f"rf-top-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    cmd = (f"env RAYFLEET_HOME={os.environ['RAYFLEET_HOME']} {Path(sys.executable).parent / 'rayfleet'} top "
           f"--interval 1; echo exited $? > {tmp_path / 'rc'}; sleep 30")
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "40", cmd], check=True)
    try:
        with Load(url.rstrip("/"), clients=2) as load:
            deadline = time.monotonic() + 60
            while True:
                screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
                try:
                    if float(_top_row(screen, "translator")[1]) > 0:
                        break
                except AssertionError:
                    pass
                assert time.monotonic() < deadline, screen
                time.sleep(1)
            assert load.errors == []
        print(screen)
        assert "from Prometheus http://127.0.0.1:" in screen
        subprocess.run([*tmux, "send-keys", "q"], check=True)
        deadline = time.monotonic() + 15
        while not (tmp_path / "rc").exists():
            assert time.monotonic() < deadline, "top did not quit on q"
            time.sleep(0.2)
        assert (tmp_path / "rc").read_text().split() == ["exited", "0"]
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_prometheus_counts_what_a_load_sent(prometheus, translator):
    """Every node's metrics in Prometheus; after a bounded load the request count, the texts translated,
    the mean batch and the p99 latency agree with what the load generator and the replica measured."""
    _, url = translator
    url = url.rstrip("/")
    r = rayfleet_cli("metrics", "url")
    assert r.returncode == 0 and r.stdout.strip() == prometheus
    deadline = time.monotonic() + 60
    while not (ups := _query(prometheus, 'up{job="ray"} == 1')):
        assert time.monotonic() < deadline, _query(prometheus, "up")
        time.sleep(2)
    print(f"{len(ups)} Ray endpoint(s) scraped: {sorted(u['metric']['instance'] for u in ups)}")
    app = 'application="translator"'
    requests_q = f'sum(ray_serve_num_http_requests_total{{{app}}})'
    texts_q = f'sum({NAMES["texts"]}{{{app}}})'
    batches_q = f'sum({NAMES["batches"]}{{{app}}})'
    batch_texts_q = f'sum({NAMES["batch_texts"]}{{{app}}})'
    requests.post(f"{url}/translate", json={"text": "Warm up."}, timeout=60)
    before = _settled(prometheus, [requests_q, texts_q, batches_q, batch_texts_q])
    lat_before = {float(r["metric"]["le"].replace("+Inf", "inf")): float(r["value"][1]) for r in _query(
        prometheus, f"sum by (le) (ray_serve_http_request_latency_ms_bucket{{{app}}})")}
    info0 = requests.get(f"{url}/info", timeout=30).json()["batching"]
    with Load(url, clients=4) as load:
        time.sleep(15)
    assert load.errors == [], load.errors[:3]
    sent = load.count()
    info1 = requests.get(f"{url}/info", timeout=30).json()["batching"]
    # (every request and text of the load counted: no need to wait for two equal reads)
    after = _settled(prometheus, list(before), reached={q: before[q] + sent for q in (requests_q, texts_q,
                                                                               batch_texts_q)})
    got = {q: after[q] - before[q] for q in before}
    lat = sorted(load.latencies)
    p99 = lat[int(0.99 * (len(lat) - 1))]
    measured_batch = (info1["texts"] - info0["texts"]) / max(1, info1["batches"] - info0["batches"])
    prom_batch = got[batch_texts_q] / max(1, got[batches_q])
    print(f"load: {sent} requests of 1 text in 15 s, p99 {p99 * 1000:.0f} ms, mean batch {measured_batch:.2f}; "
          f"Prometheus: {got[requests_q]:.0f} requests, {got[texts_q]:.0f} texts, mean batch {prom_batch:.2f}")
    assert abs(got[requests_q] - sent) <= 0.2 * sent
    assert abs(got[texts_q] - sent) <= 0.2 * sent
    assert abs(prom_batch - measured_batch) <= 0.2 * measured_batch
    # p99 from Serve's latency histogram (HAProxy's timings, rayfleet's finer buckets), over the same
    # interval: within 20 % of what the load measured, at the histogram's resolution (its bucket edges).
    def buckets() -> dict[float, float]:
        rows = _query(prometheus, f"sum by (le) (ray_serve_http_request_latency_ms_bucket{{{app}}})")
        return {float(r["metric"]["le"].replace("+Inf", "inf")): float(r["value"][1]) for r in rows}
    lat_after = buckets()
    grew = {le: v - lat_before.get(le, 0.0) for le, v in lat_after.items()}
    q99 = top._quantile(0.99, grew)
    lo = max([b for b in LATENCY_BUCKETS_MS if b <= 0.8 * p99 * 1000], default=0)
    hi = min(b for b in LATENCY_BUCKETS_MS if b >= 1.2 * p99 * 1000)
    print(f"p99 from Prometheus: {q99:.0f} ms; measured by the load {p99 * 1000:.0f} ms (allowed {lo}-{hi} ms)")
    assert lo <= q99 <= hi
    r = rayfleet_cli("metrics", "query", texts_q)
    assert r.returncode == 0 and float(r.stdout.split()[-1]) == after[texts_q], r.stdout + r.stderr
    r = rayfleet_cli("metrics", "query", "sum(")
    assert r.returncode == 1 and r.stderr.startswith("error: Prometheus refused the query: "), r.stderr
    assert os.path.getsize(local.monitoring_dir() / "prometheus.yml") > 0
