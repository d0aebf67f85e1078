"""What ``rayfleet top`` shows, computed from two snapshots of the cluster's metrics.

A snapshot is every sample of the metrics ``top`` needs, at one moment, from one of two sources:

- the cluster's Prometheus (``rayfleet up --monitoring``), one instant query;
- without it, every node's metrics endpoint itself (Ray's, as its service-discovery file or the fleet's
  ``ports.metrics_export`` lists them), parsed with ``prometheus_client``'s parser.

Rates, latency percentiles and mean batch sizes are the differences between two snapshots (a counter
that went down was reset: a replica started again), so both sources give the same figures.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rayfleet.jobs.metrics import BULK, TRAIN
from rayfleet.serve.metrics import NAMES

__all__ = ["Sample", "Snapshot", "NodeRow", "ServiceRow", "JobRow", "Frame", "from_prometheus", "from_endpoints",
           "endpoints_from_sd_file", "frame"]

REQUESTS = "ray_serve_num_http_requests_total"
LATENCY = "ray_serve_http_request_latency_ms_bucket"
IN_FLIGHT = "ray_serve_replica_processing_queries"
NODE = ("ray_node_cpu_utilization", "ray_node_cpu_count", "ray_node_mem_used", "ray_node_mem_total",
        "ray_node_gpus_utilization", "ray_node_gpus_available", "ray_node_gram_used", "ray_node_gram_available")
WANTED = (*NODE, REQUESTS, LATENCY, IN_FLIGHT, NAMES["batch_texts"], NAMES["batches"], NAMES["model_seconds"],
          NAMES["queue"], NAMES["texts"], TRAIN["step"], TRAIN["total"], TRAIN["loss"], TRAIN["samples_per_s"],
          BULK["done"], BULK["total"], BULK["rate"])


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


@dataclass
class Snapshot:
    t: float
    samples: list[Sample]
    source: str
    errors: list[str] = field(default_factory=list)   # endpoints that did not answer

    def of(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]


def from_prometheus(url: str, timeout_s: float = 10) -> Snapshot:
    """Every wanted series, as Prometheus last scraped it."""
    import requests

    r = requests.get(f"{url}/api/v1/query", params={"query": '{__name__=~"%s"}' % "|".join(WANTED)},
                     timeout=timeout_s)
    r.raise_for_status()
    samples = []
    for series in r.json()["data"]["result"]:
        labels = dict(series["metric"])
        samples.append(Sample(labels.pop("__name__"), labels, float(series["value"][1])))
    return Snapshot(time.time(), samples, f"Prometheus {url}")


def endpoints_from_sd_file(path: Path) -> list[str]:
    """host:port of every endpoint in Ray's service-discovery file (Prometheus's file_sd format)."""
    try:
        groups = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    return [t for g in groups for t in g.get("targets", [])]


def _scrape(endpoint: str, timeout_s: float) -> list[Sample]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://{endpoint}/metrics", timeout=timeout_s).text
    wanted = set(WANTED)
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                out.append(Sample(s.name, dict(s.labels, instance=endpoint), float(s.value)))
    return out


def from_endpoints(endpoints: list[str], timeout_s: float = 5) -> Snapshot:
    """Every wanted series, read from each node's metrics endpoint now (in parallel)."""
    samples: list[Sample] = []
    errors: list[str] = []
    if endpoints:
        with ThreadPoolExecutor(min(16, len(endpoints))) as pool:
            futures = {e: pool.submit(_scrape, e, timeout_s) for e in endpoints}
        for e, f in futures.items():
            try:
                samples += f.result()
            except Exception as ex:   # noqa: BLE001 - one node's endpoint down is a line in the view, not a crash
                errors.append(f"{e}: {type(ex).__name__}")
    return Snapshot(time.time(), samples, f"{len(endpoints)} node metrics endpoint(s)", errors)


@dataclass(frozen=True)
class NodeRow:
    node: str
    cpu_pct: float | None
    cpus: float | None
    mem_used_gib: float | None
    mem_total_gib: float | None
    gpu_pct: float | None
    gpus: float | None


@dataclass(frozen=True)
class ServiceRow:
    service: str
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors_per_s: float
    mean_batch: float | None
    model_busy: float | None    # the share of time the model ran, per replica on average (0-1)
    queue: float
    in_flight: float
    replicas: int


@dataclass(frozen=True)
class JobRow:
    job: str
    kind: str                   # train | bulk
    done: float                 # steps | lines
    total: float
    rate: float | None          # training pairs/s | lines/s
    loss: float | None


@dataclass(frozen=True)
class Frame:
    nodes: list[NodeRow]
    services: list[ServiceRow]
    source: str
    errors: list[str]
    seconds: float    # between the two snapshots
    jobs: list[JobRow] = field(default_factory=list)


def _key(s: Sample, *drop: str) -> tuple:
    return (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in drop)))


def _increase(prev: Snapshot, cur: Snapshot, name: str, group: str, where=lambda s: True) -> dict[str, float]:
    """Per value of label ``group``: how much counter ``name`` grew from ``prev`` to ``cur`` (a series that
    went down was reset: its whole current value is growth; a new series too)."""
    before = {_key(s): s.value for s in prev.of(name)}
    out: dict[str, float] = {}
    for s in cur.of(name):
        if not where(s):
            continue
        old = before.get(_key(s))
        grew = s.value if old is None or s.value < old else s.value - old
        g = s.labels.get(group, "")
        out[g] = out.get(g, 0.0) + grew
    return out


def _quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts {upper bound: count}."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return lower
            return lower + (b - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = b, count
    return lower


def _by_app_latency(prev: Snapshot, cur: Snapshot) -> dict[str, dict[float, float]]:
    grew = {}
    before = {_key(s): s.value for s in prev.of(LATENCY)}
    for s in cur.of(LATENCY):
        old = before.get(_key(s))
        inc = s.value if old is None or s.value < old else s.value - old
        le = float(s.labels.get("le", "inf").replace("+Inf", "inf"))
        app = s.labels.get("application", "")
        grew.setdefault(app, {})
        grew[app][le] = grew[app].get(le, 0.0) + inc
    return grew


def _sum_by(snap: Snapshot, name: str, group: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in snap.of(name):
        g = s.labels.get(group, "")
        out[g] = out.get(g, 0.0) + s.value
    return out


def _node_label(s: Sample) -> str:
    return s.labels.get("ip") or s.labels.get("NodeAddress") or s.labels.get("instance", "?").rsplit(":", 1)[0]


def frame(prev: Snapshot, cur: Snapshot) -> Frame:
    dt = max(cur.t - prev.t, 1e-3)
    nodes: dict[str, dict[str, float]] = {}
    for name in NODE:
        for s in cur.of(name):
            nodes.setdefault(_node_label(s), {})[name] = nodes.get(_node_label(s), {}).get(name, 0.0) + s.value
    gib = 2 ** 30
    node_rows = []
    for ip, v in sorted(nodes.items()):
        gpus = v.get("ray_node_gpus_available")
        node_rows.append(NodeRow(
            node=ip, cpu_pct=v.get("ray_node_cpu_utilization"), cpus=v.get("ray_node_cpu_count"),
            mem_used_gib=v["ray_node_mem_used"] / gib if "ray_node_mem_used" in v else None,
            mem_total_gib=v["ray_node_mem_total"] / gib if "ray_node_mem_total" in v else None,
            gpu_pct=(v.get("ray_node_gpus_utilization", 0.0) / gpus) if gpus else None, gpus=gpus))
    requests_by = _increase(prev, cur, REQUESTS, "application")
    errors_by = _increase(prev, cur, REQUESTS, "application", lambda s: s.labels.get("status_code", "").startswith("5"))
    latency = _by_app_latency(prev, cur)
    batch_sum = _increase(prev, cur, NAMES["batch_texts"], "application")
    batch_count = _increase(prev, cur, NAMES["batches"], "application")
    model_s = _increase(prev, cur, NAMES["model_seconds"], "application")
    queue = _sum_by(cur, NAMES["queue"], "application")
    in_flight = _sum_by(cur, IN_FLIGHT, "application")
    replicas: dict[str, set] = {}
    for s in cur.of(IN_FLIGHT):
        replicas.setdefault(s.labels.get("application", ""), set()).add(s.labels.get("replica", ""))
    apps = sorted((set(requests_by) | set(replicas)) - {""})
    services = [ServiceRow(
        service=a, rps=requests_by.get(a, 0.0) / dt,
        p50_ms=_quantile(0.5, latency.get(a, {})), p99_ms=_quantile(0.99, latency.get(a, {})),
        errors_per_s=errors_by.get(a, 0.0) / dt,
        mean_batch=(batch_sum[a] / batch_count[a]) if batch_count.get(a) else None,
        model_busy=(model_s[a] / dt / max(1, len(replicas.get(a, ())))) if a in model_s else None,
        queue=queue.get(a, 0.0), in_flight=in_flight.get(a, 0.0), replicas=len(replicas.get(a, ())))
        for a in apps]
    return Frame(node_rows, services, cur.source, cur.errors, dt, _jobs(cur))


def _jobs(cur: Snapshot) -> list[JobRow]:
    """A row per running job, from the gauges of the process that records it (the one furthest on, where a
    restarted worker's series and its predecessor's are both still there)."""
    rows = []
    for kind, names in (("train", (TRAIN["step"], TRAIN["total"], TRAIN["samples_per_s"], TRAIN["loss"])),
                        ("bulk", (BULK["done"], BULK["total"], BULK["rate"], None))):
        done, total, rate, loss = names
        lead: dict[str, Sample] = {}
        for s in cur.of(done):
            j = s.labels.get("job_id", "")
            if j not in lead or s.value > lead[j].value:
                lead[j] = s

        def value(name: str | None, of: Sample) -> float | None:
            if name is None:
                return None
            same = [s for s in cur.of(name) if s.labels == of.labels]
            any_ = [s for s in cur.of(name) if s.labels.get("job_id") == of.labels.get("job_id")]
            return (same or any_)[0].value if (same or any_) else None

        for j, s in sorted(lead.items()):
            rows.append(JobRow(job=j, kind=kind, done=s.value, total=value(total, s) or 0.0,
                               rate=value(rate, s), loss=value(loss, s)))
    return rows
