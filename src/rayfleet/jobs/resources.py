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

__all__ = ["Demand", "Usage", "check_fits", "waiting_line", "is_blocked", "StallGuard", "PendingWatch",
           "RAY_DATA_STARVED", "cluster_usage"]


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
    """(used, total) per resource, for the cluster and for each node, and what Ray's tasks, actors
    and placement groups wait for (``pending``: (shape, count)) (``resource_usage``)."""

    cluster: dict[str, tuple[float, float]]
    nodes: list[dict[str, tuple[float, float]]]
    pending: tuple[tuple[tuple[dict[str, float], ...], int], ...] = ()   # (bundles placed together, count)

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
    return Usage(cluster=u["cluster"], nodes=u["nodes"], pending=tuple(u.get("pending") or ()))


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
        # Ray's own pending demands say whether anything waits: the free resources alone can't,
        # since the job's workers, once placed, hold the CPUs its demand counts as missing.
        blocked = self.placing and not self.started and bool(usage.pending) and is_blocked(self.demand, usage)
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


_SHOWN = ("CPU", "GPU")


def _shape(shape: dict[str, float]) -> str:
    parts = [f"{shape[k]:g} {k}" for k in _SHOWN if shape.get(k)]
    parts += [f"{v:g} {k}" for k, v in shape.items() if k not in _SHOWN and not k.startswith("node:") and
              k not in ("memory", "object_store_memory") and v]
    return ", ".join(parts) or "nothing"


def _fits(bundles: tuple[dict[str, float], ...], nodes: list[dict[str, float]]) -> bool:
    """Can these bundles be placed together on nodes with these resources? First fit, largest first."""
    left = [dict(n) for n in nodes]
    for b in sorted(bundles, key=lambda b: -b.get("CPU", 0.0)):
        for n in left:
            if all(n.get(k, 0.0) + 1e-9 >= v for k, v in b.items()):
                for k, v in b.items():
                    n[k] = n.get(k, 0.0) - v
                break
        else:
            return False
    return True


def _demand(bundles: tuple[dict[str, float], ...], count: int) -> str:
    """``1 × (1 CPU)``, or ``a group of 3 × (1 CPU)`` for a placement group."""
    shapes: dict[str, int] = {}
    for b in bundles:
        shapes[_shape(b)] = shapes.get(_shape(b), 0) + 1
    inner = ", ".join(f"{n} × ({s})" for s, n in shapes.items())
    if len(bundles) > 1:
        inner = f"a group of {inner}"
        return inner if count == 1 else f"{count} × [{inner}]"
    return f"{count * len(bundles)} × ({_shape(bundles[0])})" if bundles else "nothing"


class PendingWatch:
    """Watches a running program rayfleet did not write (``rayfleet submit``): its demand is not
    known in advance, so this reads what Ray's tasks, actors and placement groups wait for
    (``Usage.pending``; cluster-wide) on every ``tick``:

    - a demand the free resources can't place for ``check_every_s``: a waiting line (when it
      changes, and every ``repeat_s``), with who holds the resources;
    - a demand no node could ever place (bigger than every node) while the job printed nothing
      for ``timeout_s``: JobError with that reason (the caller stops the job).
    """

    def __init__(self, usage, holders, *, timeout_s: float = 120, check_every_s: float = 5, repeat_s: float = 30,
                 clock=None):
        import time

        self._usage = usage
        self._holders = holders
        self.timeout_s = timeout_s
        self.check_every_s = check_every_s
        self.repeat_s = repeat_s
        self._clock = clock or time.monotonic
        self._last_progress = self._clock()
        self._last_check = float("-inf")
        self._blocked_since: float | None = None
        self._infeasible_since: float | None = None
        self._last_line = ("", float("-inf"))

    def progressed(self) -> None:
        self._last_progress = self._clock()

    def tick(self) -> str | None:
        now = self._clock()
        if now - self._last_check < self.check_every_s:
            return None
        self._last_check = now
        try:
            usage = self._usage()
        except Exception:  # noqa: BLE001 - a dashboard hiccup must not end the follow
            return None
        totals = [{k: t for k, (_, t) in n.items()} for n in usage.nodes]
        free = [{k: max(0.0, t - u) for k, (u, t) in n.items()} for n in usage.nodes]
        waiting = [(b, c) for b, c in usage.pending if not _fits(b, free)]
        never = [(b, c) for b, c in waiting if not _fits(b, totals)]
        if not waiting:
            self._blocked_since = self._infeasible_since = None
            return None
        self._blocked_since = self._blocked_since if self._blocked_since is not None else now
        if never:
            self._infeasible_since = self._infeasible_since if self._infeasible_since is not None else now
            largest = max(totals, key=lambda n: n.get("CPU", 0.0), default={})
            reason = (f"Ray waits for {', '.join(_demand(b, c) for b, c in never)}, more than the cluster's nodes "
                      f"have ({len(totals)} node(s), the largest with {_shape({k: largest.get(k, 0.0) for k in _SHOWN})})")
            if now - max(self._infeasible_since, self._last_progress) >= self.timeout_s:
                raise JobError(f"The job made no progress for {self.timeout_s:.0f} s and can't be placed: {reason}.",
                               hint="It was stopped. Ask for less in the program (workers, CPUs, GPUs), or give "
                                    "the cluster more (rayfleet up --local --num-cpus N, or add a node).")
        else:
            self._infeasible_since = None
        if now - self._blocked_since < self.check_every_s:
            return None  # a moment's contention is not worth a line
        try:
            holders = self._holders()
        except Exception:  # noqa: BLE001 - the line is still useful without them
            holders = []
        text = (f"waiting for resources: Ray's tasks and actors wait for "
                f"{', '.join(_demand(b, c) for b, c in waiting)}, free {_n(usage.free('CPU'))} of "
                f"{_n(usage.total('CPU'))} CPUs" + (f" (held by: {', '.join(holders)})" if holders else ""))
        if never:
            text += "; the cluster's nodes don't have that much"
        if text != self._last_line[0] or now - self._last_line[1] >= self.repeat_s:
            self._last_line = (text, now)
            return text
        return None
