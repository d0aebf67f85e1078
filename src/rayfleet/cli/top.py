"""``rayfleet top``: the cluster's nodes and services, live in the terminal (cluster/top.py computes it)."""

from __future__ import annotations

import collections
import os
import select
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from rayfleet.cli._common import FLEET_OPTION, console, print_table
from rayfleet.cluster import top as top_mod
from rayfleet.errors import ClusterError

__all__ = ["register"]

WINDOW_S = 30.0   # rates over the last 30 s: Ray's agents export every ~10 s, Prometheus scrapes every 5 s


def _source(fleet_file: Optional[Path]) -> tuple[Callable[[], top_mod.Snapshot], Callable[[], None]]:
    """How to take a snapshot of the targeted cluster, and how to let go of what that needs."""
    from rayfleet.cluster.target import resolve_target

    target = resolve_target(fleet_file)
    if target.local is not None:
        c = target.local
        if c.prometheus_url:
            return (lambda: top_mod.from_prometheus(c.prometheus_url)), (lambda: None)
        from rayfleet.cluster.monitoring import sd_file

        def local_endpoints() -> list[str]:   # every one on this machine (Ray lists them at its LAN address)
            return ["127.0.0.1:" + e.rsplit(":", 1)[1] for e in top_mod.endpoints_from_sd_file(sd_file(c.temp_dir))]

        return (lambda: top_mod.from_endpoints(local_endpoints())), (lambda: None)
    spec = target.fleet
    if spec.monitoring.enabled:
        from rayfleet.cluster.tunnel import Tunnel

        tunnel = Tunnel(spec, "127.0.0.1", spec.monitoring.port).__enter__()
        return (lambda: top_mod.from_prometheus(tunnel.url)), tunnel.close
    endpoints = [f"{n.address}:{spec.ports.metrics_export}" for n in spec.nodes]
    return (lambda: top_mod.from_endpoints(endpoints)), (lambda: None)


def _fmt(v: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _rate(v: float) -> str:
    """A rate in at most 5 characters: 0.25, 12.5, 248, 12345."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _table(*headers: str, title: str, name_width: int = 24) -> Table:
    """Fits 80 columns (a terminal's default): short headers, a space between columns, no padding; the
    figures never cut (the first column, a name, gives way)."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    t.add_column(headers[0], overflow="ellipsis", no_wrap=True, max_width=name_width)
    for h in headers[1:]:
        t.add_column(h, justify="right", no_wrap=True, min_width=max(len(h), 5))
    return t


def render(f: top_mod.Frame, title: str) -> Group:
    nodes = _table("node", "CPU%", "CPUs", "mem GiB", "GPU%", "GPUs", title="Nodes")
    for n in f.nodes:
        mem = (f"{_fmt(n.mem_used_gib)}/{_fmt(n.mem_total_gib)}" if n.mem_total_gib is not None else "-")
        nodes.add_row(n.node, _fmt(n.cpu_pct, ".0f"), _fmt(n.cpus, ".0f"), mem, _fmt(n.gpu_pct, ".0f"),
                      _fmt(n.gpus, ".0f"))
    services = _table("service", "req/s", "p50ms", "p99ms", "err/s", "batch", "queue", "model%", "repl",
                      title="Services (batch: mean texts per model call; queue: texts waiting for the model; "
                            "model%: the share of time it ran; repl: replicas)")
    for s in f.services:
        services.add_row(s.service, _rate(s.rps), _fmt(s.p50_ms, ".0f"), _fmt(s.p99_ms, ".0f"),
                         _rate(s.errors_per_s), _fmt(s.mean_batch), f"{s.queue:.0f}",
                         # (Ray's agents report every ~10 s: over a short window the share can look > 100 %)
                         _fmt(None if s.model_busy is None else min(100.0, 100 * s.model_busy), ".0f"),
                         str(s.replicas))
    if not f.services:
        services.caption = "no service has metrics yet"
    head = Text(f"{title} — rates over the last {f.seconds:.0f} s, from {f.source}", style="bold")
    parts = [head, nodes, services]
    if f.jobs:
        jobs = _table("job", "kind", "done", "of", "%", "rate/s", "loss",
                      title="Jobs (done: training steps or bulk lines; rate: training pairs/s or lines/s)",
                      name_width=40)   # a job id (name-date-time-suffix) whole: 80 columns hold it
        for j in f.jobs:
            jobs.add_row(j.job, j.kind, f"{j.done:.0f}", f"{j.total:.0f}",
                         _fmt(100 * j.done / j.total if j.total else None, ".0f"),
                         "-" if j.rate is None else _rate(j.rate), _fmt(j.loss, ".3f"))
        parts.append(jobs)
    if f.errors:
        parts.append(Text("not answering: " + ", ".join(f.errors), style="yellow"))
    return Group(*parts)


def _key_pressed() -> str | None:
    if select.select([sys.stdin], [], [], 0)[0]:
        return os.read(sys.stdin.fileno(), 1).decode(errors="replace")
    return None


def top(fleet_file: Optional[Path] = FLEET_OPTION,
        interval: float = typer.Option(2.0, "--interval", min=0.5, help="Seconds between refreshes."),
        once: bool = typer.Option(False, "--once", help="Print one view (after --interval s) and exit; what "
                                                       "happens too when stdout is not a terminal.")) -> None:
    """Live view of the cluster: nodes (CPU, memory, GPU), services (requests/s, p50/p99 latency, errors/s,
    mean batch, queue, replicas) and running jobs (training steps and loss, bulk lines), refreshed every 2 s.
    From the cluster's Prometheus when it runs one, else straight from every node's metrics endpoint.
    q or Ctrl-C quits.

    Example: rayfleet top    |    rayfleet top -f fleet.yaml --once
    """
    snap, close = _source(fleet_file)
    title = "rayfleet top" + (f" -f {fleet_file}" if fleet_file else "")
    history: collections.deque[top_mod.Snapshot] = collections.deque()

    def take() -> top_mod.Snapshot:
        try:
            s = snap()
        except Exception as e:   # noqa: BLE001 - Prometheus or the tunnel gone: said, not a traceback
            raise ClusterError(f"Can't read the cluster's metrics: {type(e).__name__}: {e}",
                               hint="Is the cluster up? 'rayfleet status' says.") from None
        history.append(s)
        while len(history) > 2 and history[-1].t - history[1].t >= WINDOW_S:
            history.popleft()
        return s

    try:
        take()
        if once or not console.is_terminal:
            time.sleep(interval)
            take()
            print_table(render(top_mod.frame(history[0], history[-1]), title))
            return
        _live(take, history, interval, title)
    finally:
        close()


def _live(take, history, interval: float, title: str) -> None:
    import termios
    import tty

    from rich.live import Live

    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    try:
        if fd is not None:
            tty.setcbreak(fd)
        with Live(Text("reading the cluster's metrics ..."), console=console, screen=True,
                  auto_refresh=False) as live:
            while True:
                deadline = time.monotonic() + interval
                while time.monotonic() < deadline:
                    if fd is not None and (_key_pressed() or "").lower() == "q":
                        return
                    time.sleep(0.1)
                take()
                live.update(render(top_mod.frame(history[0], history[-1]), title), refresh=True)
    except KeyboardInterrupt:
        return
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def register(app: typer.Typer) -> None:
    app.command()(top)
