"""What a job needs from the cluster, compared with what the cluster has.

A job rayfleet submits (training, tuning, bulk translation) needs a group of
processes at once: ``workers`` of ``cpus``/``gpus`` each, every one on a single node.
``check_fits`` refuses, before anything is submitted, a job that no state of the
cluster could ever place (more than its total, or a worker bigger than any node),
and says what is missing and the fix. ``waiting_line`` says why a job that fits
waits: what it needs, what is free, and who holds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayfleet.errors import JobError

__all__ = ["Demand", "Usage", "check_fits", "waiting_line", "is_blocked", "StallGuard", "RAY_DATA_STARVED",
           "cluster_usage"]


@dataclass(frozen=True)
class Demand:
    """``workers`` processes of ``cpus`` CPUs and ``gpus`` GPUs each, placed at once."""

    what: str          # "training job en-fr-tiny (2 workers)", for messages
    workers: int
    cpus: float
    gpus: float = 0.0

    @property
    def total_cpus(self) -> float:
        return self.workers * self.cpus

    @property
    def total_gpus(self) -> float:
        return self.workers * self.gpus


@dataclass(frozen=True)
class Usage:
    """(used, total) per resource, for the cluster and for each node (``resource_usage``)."""

    cluster: dict[str, tuple[float, float]]
    nodes: list[dict[str, tuple[float, float]]]

    def total(self, resource: str) -> float:
        return self.cluster.get(resource, (0.0, 0.0))[1]

    def free(self, resource: str) -> float:
        used, total = self.cluster.get(resource, (0.0, 0.0))
        return max(0.0, total - used)

    def node_free(self, resource: str) -> list[float]:
        return [max(0.0, n.get(resource, (0.0, 0.0))[1] - n.get(resource, (0.0, 0.0))[0]) for n in self.nodes]

    def node_totals(self) -> list[tuple[float, float]]:
        """(CPUs, GPUs) of each node."""
        return [(n.get("CPU", (0.0, 0.0))[1], n.get("GPU", (0.0, 0.0))[1]) for n in self.nodes]

    def largest_node(self, resource: str) -> float:
        return max((n.get(resource, (0.0, 0.0))[1] for n in self.nodes), default=0.0)


def cluster_usage(dashboard_url: str, headers: dict[str, str]) -> Usage:
    from rayfleet.cluster.dashboard import resource_usage

    u = resource_usage(dashboard_url, headers)
    return Usage(cluster=u["cluster"], nodes=u["nodes"])


def _n(x: float) -> str:
    return f"{x:g}"


def _cpus(x: float) -> str:
    return f"{x:g} CPU" + ("" if x == 1 else "s")


def _placeable(demand: Demand, per_node: list[tuple[float, float]]) -> bool:
    """Can ``demand.workers`` workers fit on nodes with these (cpus, gpus)? First fit, largest first."""
    left = sorted(per_node, reverse=True)
    for _ in range(demand.workers):
        for i, (c, g) in enumerate(left):
            if c + 1e-9 >= demand.cpus and g + 1e-9 >= demand.gpus:
                left[i] = (c - demand.cpus, g - demand.gpus)
                break
        else:
            return False
    return True


def check_fits(demand: Demand, usage: Usage, *, fix: str) -> None:
    """JobError when no state of the cluster could place ``demand``. ``fix`` names the job-side
    fix (e.g. "--num-workers 1"); the message adds the cluster-side ones."""
    if _placeable(demand, usage.node_totals()):
        return
    cpus, gpus = usage.total("CPU"), usage.total("GPU")
    need = f"{_cpus(demand.total_cpus)} ({demand.workers} × {_n(demand.cpus)})"
    if demand.gpus:
        need += f" and {_n(demand.total_gpus)} GPUs ({demand.workers} × {_n(demand.gpus)})"
    have = _cpus(cpus) + (f" and {_n(gpus)} GPUs" if demand.gpus else "")
    if len(usage.nodes) > 1:
        have += f" on {len(usage.nodes)} nodes (the largest has {_n(usage.largest_node('CPU'))} CPUs)"
    raise JobError(
        f"The {demand.what} needs {need} at once; the cluster has {have}, so it could never start.",
        hint=f"Ask for less ({fix}), or give the cluster more: 'rayfleet down --local && rayfleet up --local "
             f"--num-cpus {_n(max(demand.total_cpus, demand.cpus))}' on this machine, or add a node to the fleet.")


def is_blocked(demand: Demand, usage: Usage) -> bool:
    """True when the free resources can't place ``demand`` now (it waits for others to finish)."""
    return not _placeable(demand, list(zip(usage.node_free("CPU"), usage.node_free("GPU"))))


def waiting_line(demand: Demand, usage: Usage, holders: list[str]) -> str:
    """``waiting for resources: needs 2 CPUs, free 0 of 2 (held by: ...)``."""
    line = (f"waiting for resources: needs {_cpus(demand.total_cpus)}"
            + (f" and {_n(demand.total_gpus)} GPUs" if demand.gpus else "")
            + f", free {_n(usage.free('CPU'))} of {_n(usage.total('CPU'))} CPUs"
            + (f", {_n(usage.free('GPU'))} of {_n(usage.total('GPU'))} GPUs" if demand.gpus else ""))
    if holders:
        line += f" (held by: {', '.join(holders)})"
    return line


# Ray Data's own words when its tasks can't get a CPU (the job would wait forever).
RAY_DATA_STARVED = "Cluster resources are not enough to run any task"


class StallGuard:
    """Watches a followed job between its log lines (``tick`` on every poll).

    - While the job has not started its work and the cluster's free resources can't
      place it, ``tick`` returns a ``waiting_line`` (when it changes, and every
      ``repeat_s``), so a waiting job is never silent.
    - When its demand is unplaceable (more than the cluster has: a node was lost,
      or Ray Data said its tasks can't get a CPU) and no progress came for
      ``timeout_s``, ``tick`` raises JobError with that reason; the caller stops the job.
    """

    def __init__(self, demand: Demand, usage, holders, *, timeout_s: float = 120, check_every_s: float = 5,
                 repeat_s: float = 30, clock=None):
        import time

        self.demand = demand
        self._usage = usage          # () -> Usage
        self._holders = holders      # () -> list[str]
        self.timeout_s = timeout_s
        self.check_every_s = check_every_s
        self.repeat_s = repeat_s
        self._clock = clock or time.monotonic
        self.placing = False         # the job asks for its workers now (a phase event says so)
        self.started = False         # the job's work began (its workers run)
        self._last_progress = self._clock()
        self._last_check = float("-inf")
        self._last_line = ("", float("-inf"))
        self._blocked_since: float | None = None
        self._starved: str | None = None   # why the demand is unplaceable, since when
        self._starved_since = 0.0

    def progressed(self, *, started: bool = False) -> None:
        self._last_progress = self._clock()
        self.started = self.started or started
        self._starved = None

    def log_line(self, line: str) -> None:
        if RAY_DATA_STARVED in line and self._starved is None:
            self._starved, self._starved_since = ("Ray Data's tasks can't get a CPU: the job's workers hold "
                                                  "every CPU of the cluster"), self._clock()

    def tick(self) -> str | None:
        now = self._clock()
        if now - self._last_check < self.check_every_s:
            return None
        self._last_check = now
        line = None
        try:
            usage = self._usage()
        except Exception:  # noqa: BLE001 - a dashboard hiccup must not end the follow
            return None
        if not self.started and not _placeable(self.demand, usage.node_totals()) and self._starved is None:
            self._starved, self._starved_since = (f"it needs {_n(self.demand.total_cpus)} CPUs and the cluster "
                                                  f"has {_n(usage.total('CPU'))} now"), now
        blocked = self.placing and not self.started and is_blocked(self.demand, usage)
        if not blocked:
            self._blocked_since = None
        elif self._blocked_since is None:
            self._blocked_since = now  # a moment's contention (data tasks ending) is not worth a line
        if blocked and now - self._blocked_since >= self.check_every_s:
            try:
                holders = self._holders()
            except Exception:  # noqa: BLE001 - the line is still useful without them
                holders = []
            text = waiting_line(self.demand, usage, holders)
            if text != self._last_line[0] or now - self._last_line[1] >= self.repeat_s:
                self._last_line = (text, now)
                line = text
        if self._starved and now - max(self._starved_since, self._last_progress) >= self.timeout_s:
            raise JobError(f"The {self.demand.what} made no progress for {self.timeout_s:.0f} s and can't be "
                           f"placed: {self._starved}.",
                           hint="It was stopped. Ask for fewer workers or CPUs, or give the cluster more "
                                "(rayfleet up --local --num-cpus N, or add a node).")
        return line
