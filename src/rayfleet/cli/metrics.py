"""``rayfleet metrics``: where the cluster's Prometheus is, and a PromQL query from the terminal."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from rayfleet.cli._common import FLEET_OPTION, console
from rayfleet.errors import ClusterError

__all__ = ["register"]

metrics_app = typer.Typer(
    help="The cluster's Prometheus ('rayfleet up --local --monitoring', or 'monitoring: true' in fleet.yaml): "
         "its URL, or a PromQL query.\n\n"
         "Example: rayfleet metrics url; rayfleet metrics query 'sum(rate(ray_serve_num_http_requests_total[1m]))'; "
         "rayfleet metrics grafana -o grafana/",
    no_args_is_help=True, rich_markup_mode=None)


def _where(fleet_file: Optional[Path]):
    """(URL, None) for the local cluster's Prometheus, (None, fleet) for a fleet's (on the head's loopback:
    reached through SSH); ClusterError saying how to turn it on when the cluster runs none."""
    from rayfleet.cluster.target import resolve_target

    target = resolve_target(fleet_file)
    if target.local is not None:
        if not target.local.prometheus_url:
            raise ClusterError("The local cluster runs no Prometheus.",
                               hint="Start it with: rayfleet up --local --monitoring   (the running cluster keeps "
                                    "running; Prometheus is added)")
        return target.local.prometheus_url, None
    spec = target.fleet
    if not spec.monitoring.enabled:
        raise ClusterError(f"Fleet '{spec.name}' runs no Prometheus (monitoring is off).",
                           hint=f"Set 'monitoring: true' in {fleet_file or 'fleet.yaml'} and run 'rayfleet up' "
                                "(Ray is not restarted for it).")
    return None, spec


@contextmanager
def _prometheus(fleet_file: Optional[Path], local_port: int = 0) -> Iterator[str]:
    """The URL of the cluster's Prometheus for the block (a fleet's: an SSH tunnel to the head's, open
    meanwhile)."""
    from rayfleet.cluster.tunnel import Tunnel

    url, spec = _where(fleet_file)
    if spec is None:
        yield url
        return
    with Tunnel(spec, "127.0.0.1", spec.monitoring.port, local_port=local_port) as t:
        yield t.url


@metrics_app.command("url")
def url(fleet_file: Optional[Path] = FLEET_OPTION,
        port: int = typer.Option(0, "--port", help="Fleets: local port of the tunnel (default: a free one).")) -> None:
    """Print the URL of the cluster's Prometheus (its web UI and API). A fleet's runs on the head's
    loopback: this opens an SSH tunnel to it (host key checked) and keeps it open until Ctrl-C.

    Example: rayfleet metrics url    |    rayfleet metrics url -f fleet.yaml
    """
    import signal
    import threading

    _, spec = _where(fleet_file)
    if spec is None:
        with _prometheus(fleet_file) as base:
            print(base)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _prometheus(fleet_file, port) as base:
        print(base, flush=True)
        console.print(f"(through SSH to {spec.head.label}; Ctrl-C closes it)", markup=False)
        try:
            while not stop.is_set():
                stop.wait(0.5)
        except KeyboardInterrupt:
            pass


@metrics_app.command("query")
def query(promql: str = typer.Argument(..., help="A PromQL expression."),
          fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """Run an instant PromQL query; one line per series: its labels, then its value.

    Example: rayfleet metrics query 'sum by (application) (rate(ray_serve_num_http_requests_total[1m]))'
    """
    import requests

    with _prometheus(fleet_file) as base:
        try:
            r = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=30)
            body = r.json()
        except (requests.RequestException, ValueError) as e:
            raise ClusterError(f"Prometheus at {base} did not answer: {e}",
                               hint="Is it running? 'rayfleet up --monitoring' (local) or 'rayfleet up' (a fleet "
                                    "with monitoring on) starts it again.") from None
    if body.get("status") != "success":
        raise ClusterError(f"Prometheus refused the query: {body.get('error', r.text[:200])}",
                           hint="Check the PromQL; the metric names are in README: Monitoring.")
    result = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        console.print(result[1], markup=False)
        return
    if not result:
        console.print("(no data)", markup=False)
    for series in result:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(series.get("metric", {}).items()))
        value = series.get("value", [None, "?"])[1]
        console.print(f"{{{labels}}} {value}", markup=False)


@metrics_app.command("grafana")
def grafana(out: Path = typer.Option(..., "-o", "--output", help="Directory to write (created; files in it replaced)."),
            fleet_file: Optional[Path] = FLEET_OPTION,
            prometheus_url: Optional[str] = typer.Option(
                None, "--prometheus-url", help="The Prometheus URL as Grafana will reach it (default: the local "
                                               "cluster's; a fleet's on its head, for a Grafana there)."),
            dashboards_path: Optional[str] = typer.Option(
                None, "--dashboards-path", help="Where Grafana will read the dashboards from, if not OUTPUT/dashboards "
                                                "on the machine that runs it.")) -> None:
    """Write Grafana provisioning for the cluster's Prometheus: Ray's dashboards (as Ray generates them) and a
    rayfleet dashboard (services: requests, status codes, p50/p99, mean batch, model busy, queue, replicas; jobs:
    training progress, loss, evaluation, bulk lines; nodes), a Prometheus data source and a dashboards provider.
    Point Grafana's provisioning path at OUTPUT/provisioning. Nothing is started.

    Example: rayfleet metrics grafana -o grafana/    |    rayfleet metrics grafana -f fleet.yaml -o /etc/grafana/rf
    """
    from rayfleet.cluster import grafana as g

    url, spec = _where(fleet_file)
    if prometheus_url is None:
        prometheus_url = url or f"http://127.0.0.1:{spec.monitoring.port}"
    try:
        files = g.write(out, prometheus_url, dashboards_path)
    except OSError as e:
        raise ClusterError(f"Can't write {out}: {e.strerror or e}", hint="Choose a directory you can write.") from None
    dashboards = sum(1 for f in files if f.suffix == ".json")
    console.print(f"Wrote {dashboards} dashboards and the provisioning for Prometheus at {prometheus_url} to "
                  f"{Path(out).absolute()}", markup=False)
    console.print(f"Start Grafana with its provisioning path there, e.g.: GF_PATHS_PROVISIONING="
                  f"{Path(out).absolute() / 'provisioning'} grafana-server", markup=False)
    if spec is not None and prometheus_url.startswith(("http://127.0.0.1", "http://localhost")):
        console.print(f"(the URL is the head's loopback: for a Grafana on {spec.head.label}; elsewhere give "
                      "--prometheus-url)", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(metrics_app, name="metrics")
