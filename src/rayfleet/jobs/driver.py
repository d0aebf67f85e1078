"""The one skeleton of a workload's driver (``python -m rayfleet.train.workload JOB.json``,
``python -m rayfleet.bulk.workload JOB_JSON``): read the job, run it, and make the last line of
the log an event the client understands: the ``result``, or an ``error`` with a message and hint."""

from __future__ import annotations

import sys
import traceback
from typing import Callable, TypeVar

from pydantic import ValidationError

from rayfleet.errors import JobError, RayfleetError
from rayfleet.jobs.events import Error, Event, emit

__all__ = ["run_driver"]

J = TypeVar("J")


def run_driver(argv: list[str] | None, usage: str, load: Callable[[str], J], run: Callable[[J], Event],
               job_id: Callable[[J], str]) -> int:
    """``load`` the job from the one argument, ``run`` it and emit its result event; exit code 0/1 (2: usage)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write(f"usage: {usage}\n")
        return 2
    name = "ID"
    try:
        try:
            job = load(argv[0])
        except ValidationError as e:  # job.json written by another rayfleet than the cluster's
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "job"
            raise JobError(f"This job's description does not match the rayfleet on the cluster ({where}: "
                           f"{first['msg']}).",
                           hint="Install the same rayfleet version here and on the cluster's nodes.") from e
        name = job_id(job) or name
        result = run(job)
    except RayfleetError as e:
        if e.__cause__ is not None:  # what went wrong underneath, in the log; the event says it in words
            traceback.print_exception(e.__cause__)
        emit(Error(message=e.message, hint=e.hint))
        return 1
    except Exception as e:  # noqa: BLE001 - the job's last word must be an event the client understands
        traceback.print_exc()
        emit(Error(message=f"{type(e).__name__}: {e}", hint=f"See the full log with: rayfleet jobs logs {name}"))
        return 1
    emit(result)
    return 0
