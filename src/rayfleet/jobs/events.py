"""The line protocol between a job (training, tuning, bulk translation) and the client that follows it.

The job (driver and rank-0 worker) writes one line per event to its stdout, which Ray
keeps as the job's log::

    RAYFLEET_EVENT {"event": "progress", "step": 120, "total_steps": 500, ...}

Every event is a pydantic model below, written (``emit``) and read (``parse``) through
the model on both sides: a field renamed on one side fails at validation with the event
and field named, not as a ``KeyError`` deep in a follower. A job kind speaks one protocol
(``TrainEvent`` for train and tune, ``BulkEvent`` for translate-file), a union
discriminated on ``event``. Ray may prefix worker lines with ``(RayTrainWorker pid=...)``,
so the marker is searched anywhere in the line.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from rayfleet.errors import RayfleetError

__all__ = ["MARKER", "emit", "parse", "Event", "Phase", "Warning", "Error", "MlflowRun", "TrainStart",
           "TrainProgress", "Eval", "Checkpoint", "Trial", "TrainResult", "BulkStart", "BulkProgress",
           "BulkResult", "TrainEvent", "BulkEvent"]

MARKER = "RAYFLEET_EVENT "


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- every job kind ----------------------------------------------------------------------

class Phase(Event):
    """The job entered a phase; ``waits_for_resources``: it now asks the cluster for its workers or
    actors (from then on the follower reports waiting)."""
    event: Literal["phase"] = "phase"
    name: str
    waits_for_resources: bool = False


class Warning(Event):  # noqa: A001 - the event's name in the protocol
    event: Literal["warning"] = "warning"
    message: str


class Error(Event):
    """The job failed: its last word."""
    event: Literal["error"] = "error"
    message: str
    hint: str | None = None


# ---- training and tuning ----------------------------------------------------------------------

class MlflowRun(Event):
    event: Literal["mlflow_run"] = "mlflow_run"
    run_id: str


class TrainStart(Event):
    """A worker group started (again, after a failure: ``resumed_from`` the checkpoint's step)."""
    event: Literal["start"] = "start"
    total_steps: int
    steps_per_epoch: int
    workers: int
    pids: list[int]                 # each rank's process id
    nodes: list[str]                # each rank's node IP
    resumed_from: int | None = None
    train_pairs_per_worker: int


class TrainProgress(Event):
    event: Literal["progress"] = "progress"
    step: int
    total_steps: int
    epoch: int
    epochs: int
    loss: float
    lr: float
    samples_per_s: float


class Eval(Event):
    event: Literal["eval"] = "eval"
    step: int
    bleu: float
    chrf: float
    exact_match: float


class Checkpoint(Event):
    event: Literal["checkpoint"] = "checkpoint"
    step: int


class Trial(Event):
    """A tuning trial ended."""
    event: Literal["trial"] = "trial"
    trial: int
    config: dict[str, Any]
    metrics: dict[str, float]
    error: str = ""


class TrainResult(Event):
    """The run's outcome; ``model``/``version``/``aliases`` when it registered a model, ``best_config``
    and ``trials`` for tuning."""
    event: Literal["result"] = "result"
    metrics: dict[str, float]
    checkpoint: str
    run_id: str | None = None
    model: str | None = None
    version: str | None = None
    aliases: list[str] = []
    best_config: dict[str, Any] | None = None
    trials: int | None = None


# ---- bulk translation ----------------------------------------------------------------------

class BulkStart(Event):
    event: Literal["start"] = "start"
    lines: int
    parts: int
    parts_done: int                 # by an earlier run: skipped
    lines_done: int
    part_size: int


class BulkProgress(Event):
    event: Literal["progress"] = "progress"
    lines_done: int
    lines: int
    lines_per_s: float
    parts_written: int


class BulkResult(Event):
    event: Literal["result"] = "result"
    output: str
    errors_file: str | None
    lines: int
    translated: int
    bad: int
    bad_lines: list[tuple[int, str]]    # (line number, why): the first few
    parts: int
    parts_skipped: int
    parts_translated: int
    actors: int
    seconds: float
    lines_per_s: float | None


TrainEvent = Annotated[Union[Phase, Warning, Error, MlflowRun, TrainStart, TrainProgress, Eval, Checkpoint, Trial,
                             TrainResult], Field(discriminator="event")]
BulkEvent = Annotated[Union[Phase, Warning, Error, BulkStart, BulkProgress, BulkResult], Field(discriminator="event")]

_ADAPTERS: dict[Any, TypeAdapter] = {}


def emit(event: Event) -> None:
    """Write one event line to stdout (this is the job's output protocol, not logging)."""
    sys.stdout.write(MARKER + event.model_dump_json(fallback=str) + "\n")
    sys.stdout.flush()


def parse(line: str, protocol: Any) -> Event | None:
    """The event on a log line (one of ``protocol``: ``TrainEvent`` or ``BulkEvent``), None for any other
    line; RayfleetError naming the event and field when a marked line doesn't match the protocol (not a
    JobError: the job itself is fine, and keeps running)."""
    i = line.find(MARKER)
    if i < 0:
        return None
    adapter = _ADAPTERS.get(protocol) or _ADAPTERS.setdefault(protocol, TypeAdapter(protocol))
    try:
        return adapter.validate_json(line[i + len(MARKER):])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise RayfleetError(f"The job wrote an event this rayfleet can't read ({where}: {first['msg']}): "
                       f"{line[i + len(MARKER):][:200]}",
                       hint="The job ran another rayfleet version than this client: install the same version "
                            "here and on the cluster's nodes.") from None
