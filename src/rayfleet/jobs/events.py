"""The line protocol between a job (training, tuning, bulk translation) and the client that follows it.

The job (driver and rank-0 worker) writes one line per event to its stdout,
which Ray keeps as the job's log::

    RAYFLEET_EVENT {"event": "progress", "step": 120, "total_steps": 500, ...}

The client reads the job log and picks these lines out (``parse``); anything
else in the log is shown as is. Ray may prefix worker lines with
``(RayTrainWorker pid=...)``, so the marker is searched anywhere in the line.

Events: ``phase`` (name; ``waits_for_resources`` when the job now asks the
cluster for its workers or actors: from then on the client reports waiting),
``start`` (total_steps, workers, pids and nodes: each rank's process id
and node IP, resumed_from), ``progress`` (step, epoch, loss, samples_per_s),
``eval`` (step, bleu, chrf, exact_match, loss), ``checkpoint`` (step),
``result`` (metrics, model, version, run_id), ``error`` (message, hint).
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["MARKER", "emit", "parse"]

MARKER = "RAYFLEET_EVENT "


def emit(event: str, **fields: Any) -> None:
    """Write one event line to stdout (this is the job's output protocol, not logging)."""
    sys.stdout.write(MARKER + json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event on a log line, or None for any other line."""
    i = line.find(MARKER)
    if i < 0:
        return None
    try:
        obj = json.loads(line[i + len(MARKER):])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None
