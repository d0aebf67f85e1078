"""Jobs' progress as Prometheus metrics, recorded with Ray's metrics API (``ray.util.metrics``) by the
process that knows it (a training job's rank-0 worker, a bulk job's driver); Ray's metrics agent on
that node exports them, prefixed ``ray_``, and the series end with the process.

Every metric carries ``job_id``: the Ray job's submission id, what ``rayfleet jobs`` lists (a training job's
run name; a Tune trial's run name and trial). (Not ``job``: Prometheus's own label for the scrape job, which
would rename ours to ``exported_job``.) Training metrics also carry ``name`` (the spec's name).

A metric that can't be recorded is a warning in the job's log, once; never the job's failure.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TRAIN", "BULK", "TrainMetrics", "BulkMetrics"]

# As Prometheus shows them.
TRAIN = {
    "step": "ray_rayfleet_train_step",
    "total": "ray_rayfleet_train_total_steps",
    "loss": "ray_rayfleet_train_loss",
    "samples_per_s": "ray_rayfleet_train_samples_per_s",
    "eval": "ray_rayfleet_train_eval",
}
BULK = {
    "done": "ray_rayfleet_bulk_lines_done",
    "total": "ray_rayfleet_bulk_lines",
    "rate": "ray_rayfleet_bulk_lines_per_s",
}


class _Gauges:
    """Gauges with the same default tags, created on first use; a failure warns once, then records nothing."""

    def __init__(self, tags: dict[str, str]):
        self._tags = tags
        self._gauges: dict[tuple, Any] = {}
        self._broken = False

    def set(self, name: str, value: float, description: str, **extra: str) -> None:
        if self._broken:
            return
        try:
            key = (name, tuple(sorted(extra)))
            g = self._gauges.get(key)
            if g is None:
                from ray.util import metrics

                g = metrics.Gauge(name, description=description, tag_keys=(*self._tags, *sorted(extra)))
                g.set_default_tags(dict(self._tags))
                self._gauges[key] = g
            g.set(float(value), tags=extra or None)
        except Exception as e:  # noqa: BLE001 - metrics never fail a job
            self._broken = True
            from rayfleet.jobs.events import Warning, emit

            emit(Warning(message=f"could not record the job's metrics ({type(e).__name__}: {e}); "
                                 "the job goes on without them"))


class TrainMetrics:
    """A training run's step, loss, throughput and evaluation (rank 0 records them)."""

    def __init__(self, job: str, name: str):
        self._g = _Gauges({"job_id": job, "name": name})

    def progress(self, step: int, total: int, loss: float, samples_per_s: float) -> None:
        self._g.set("rayfleet_train_step", step, "Optimizer steps done.")
        self._g.set("rayfleet_train_total_steps", total, "Optimizer steps the run will do.")
        self._g.set("rayfleet_train_loss", loss, "Training loss, mean over the steps since the last report.")
        self._g.set("rayfleet_train_samples_per_s", samples_per_s, "Training pairs per second, all workers.")

    def evaluation(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self._g.set("rayfleet_train_eval", v, "The last evaluation's metrics (bleu, chrf, exact_match).",
                        metric=k)


class BulkMetrics:
    """A bulk translation's lines (its driver records them)."""

    def __init__(self, job: str):
        self._g = _Gauges({"job_id": job})

    def progress(self, done: int, total: int, lines_per_s: float) -> None:
        self._g.set("rayfleet_bulk_lines_done", done, "Lines translated (and kept) so far.")
        self._g.set("rayfleet_bulk_lines", total, "Lines in the input.")
        self._g.set("rayfleet_bulk_lines_per_s", lines_per_s, "Lines per second, over the last few seconds.")
