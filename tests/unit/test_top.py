"""rayfleet top's figures from two snapshots: rates, percentiles as Prometheus computes them, resets."""

from __future__ import annotations

import pytest

from rayfleet.cluster import top
from rayfleet.serve.metrics import NAMES

pytestmark = pytest.mark.unit


def _snap(t: float, requests: float, errors: float, buckets: dict, batch: tuple[float, float], replica="r1"):
    app = {"application": "translator"}
    s = [top.Sample(top.REQUESTS, dict(app, status_code="200"), requests),
         top.Sample(top.REQUESTS, dict(app, status_code="500"), errors),
         top.Sample(NAMES["batch_texts"], dict(app, replica=replica), batch[0]),
         top.Sample(NAMES["batches"], dict(app, replica=replica), batch[1]),
         top.Sample(NAMES["model_seconds"], dict(app, replica=replica), batch[1] / 100),
         top.Sample(NAMES["queue"], dict(app, replica=replica), 3),
         top.Sample(top.IN_FLIGHT, dict(app, replica=replica), 2),
         top.Sample("ray_node_cpu_utilization", {"ip": "10.0.0.1"}, 55.0),
         top.Sample("ray_node_cpu_count", {"ip": "10.0.0.1"}, 2),
         top.Sample("ray_node_mem_used", {"ip": "10.0.0.1"}, 3 * 2**30),
         top.Sample("ray_node_mem_total", {"ip": "10.0.0.1"}, 8 * 2**30)]
    s += [top.Sample(top.LATENCY, dict(app, le=le), v) for le, v in buckets.items()]
    return top.Snapshot(t, s, "test")


def test_rates_percentiles_and_batches_between_two_snapshots():
    a = _snap(100, 1000, 10, {"10": 100, "50": 900, "100": 1000, "+Inf": 1000}, (4000, 1000))
    # 20 s later: 400 more requests (4 of them 500s); latencies of 300: 100 <= 10 ms, 100 in 10-50, 100 in 50-100
    b = _snap(120, 1396, 14, {"10": 200, "50": 1100, "100": 1300, "+Inf": 1300}, (5600, 1200))
    f = top.frame(a, b)
    (svc,) = f.services
    assert svc.service == "translator" and svc.rps == pytest.approx(20.0) and svc.errors_per_s == pytest.approx(0.2)
    assert svc.p50_ms == pytest.approx(10 + 40 * (150 - 100) / 100)   # rank 150 of 300: in 10-50 ms, interpolated
    assert svc.p99_ms == pytest.approx(50 + 50 * (297 - 200) / 100)   # as Prometheus's histogram_quantile does
    assert svc.mean_batch == pytest.approx(8.0) and svc.queue == 3 and svc.in_flight == 2 and svc.replicas == 1
    assert svc.model_busy == pytest.approx(2 / 20)   # 200 more batches of 10 ms in 20 s
    (node,) = f.nodes
    assert (node.node, node.cpu_pct, node.cpus, node.mem_used_gib, node.mem_total_gib) == ("10.0.0.1", 55, 2, 3, 8)
    assert node.gpu_pct is None


def test_a_counter_that_went_down_was_reset():
    a = _snap(0, 5000, 0, {"+Inf": 5000}, (100, 10), replica="old")
    b = _snap(10, 50, 0, {"+Inf": 50}, (80, 10), replica="new")   # a new replica: its counters start over
    (svc,) = top.frame(a, b).services
    assert svc.rps == pytest.approx(5.0) and svc.mean_batch == pytest.approx(8.0)


def test_endpoints_from_rays_service_discovery_file(tmp_path):
    sd = tmp_path / "sd.json"
    sd.write_text('[{"labels": {"job": "ray"}, "targets": ["127.0.0.1:6382", "10.0.0.2:6382"]}]')
    assert top.endpoints_from_sd_file(sd) == ["127.0.0.1:6382", "10.0.0.2:6382"]
    assert top.endpoints_from_sd_file(tmp_path / "none.json") == []


def test_a_row_per_running_job_from_the_process_furthest_on():
    from rayfleet.jobs.metrics import BULK, TRAIN

    job = "en-fr-tiny-20261203-150000-ab12"   # as long as a real run name
    old = {"job_id": job, "name": "en-fr", "WorkerId": "a"}   # a killed worker's last export, still there
    new = {"job_id": job, "name": "en-fr", "WorkerId": "b"}
    bulk = {"job_id": "rf-bulk-9"}
    s = [top.Sample(TRAIN["step"], old, 150), top.Sample(TRAIN["loss"], old, 2.5),
         top.Sample(TRAIN["step"], new, 220), top.Sample(TRAIN["total"], new, 300),
         top.Sample(TRAIN["loss"], new, 1.25), top.Sample(TRAIN["samples_per_s"], new, 410.0),
         top.Sample(TRAIN["total"], old, 300), top.Sample(TRAIN["samples_per_s"], old, 1.0),
         top.Sample(BULK["done"], bulk, 1500), top.Sample(BULK["total"], bulk, 3000), top.Sample(BULK["rate"], bulk, 75)]
    f = top.frame(top.Snapshot(0, [], "test"), top.Snapshot(10, s, "test"))
    assert f.jobs == [top.JobRow(job, "train", 220, 300, 410.0, 1.25),
                      top.JobRow("rf-bulk-9", "bulk", 1500, 3000, 75, None)]
    from rich.console import Console

    from rayfleet.cli.top import render

    console = Console(width=80, record=True)
    console.print(render(f, "rayfleet top"))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    assert [ln.split() for ln in lines if ln.strip().startswith(("rf-", "en-"))] == [
        [job, "train", "220", "300", "73", "410", "1.250"],
        ["rf-bulk-9", "bulk", "1500", "3000", "50", "75.0", "-"]]
