"""Errors a rayfleet user can cause, and how they are shown.

Every error a user can cause is a ``RayfleetError``; only ``cli/main.py``
catches them and prints ``error: <message>`` plus the hint.

    RayfleetError
    ├── ConfigError            a YAML file is malformed or a field is invalid
    ├── ClusterError           the local/fleet cluster can't be started, reached or stopped
    │   ├── ClusterNotRunning  an operation needs a cluster that is not up
    │   └── SSHError           a node can't be reached over SSH (or a command on it timed out)
    ├── ModelError             a model can't be found or loaded
    ├── ServeError             a service can't be deployed, listed or deleted
    ├── ClientError            a request to a running service failed
    ├── JobError               a Ray Job can't be submitted, found, followed or stopped
    ├── TrainError             a training or tuning run failed (the job ran, the run did not finish)
    │   └── DataError          a data file is missing, empty, or has the wrong columns
    ├── RegistryError          the model registry can't be reached, or a model/version/alias is unknown
    ├── BulkError              a bulk translation can't start or failed
    └── CompatError            an installed library is not the version rayfleet's adapter was written for
"""

from __future__ import annotations

import re

__all__ = [
    "exception_line",
    "RayfleetError",
    "ConfigError",
    "ClusterError",
    "ClusterNotRunning",
    "ModelError",
    "ServeError",
    "SSHError",
    "ClientError",
    "JobError",
    "TrainError",
    "DataError",
    "RegistryError",
    "BulkError",
    "CompatError",
]


class RayfleetError(Exception):
    """Base of every error a user can cause.

    ``message`` says what was wrong, ``context`` where (file:line, host,
    stderr tail), ``hint`` how to fix it.
    """

    def __init__(self, message: str, *, hint: str | None = None, context: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context = context

    def __str__(self) -> str:
        return self.message


class ConfigError(RayfleetError):
    """A configuration file can't be read or fails validation."""


class ClusterError(RayfleetError):
    """The cluster can't be started, reached or stopped."""


class ClusterNotRunning(ClusterError):
    """An operation needs a running cluster and there is none."""


class SSHError(ClusterError):
    """A node could not be reached over SSH (or a command on it timed out)."""


class ModelError(RayfleetError):
    """A model can't be found or loaded."""


class ServeError(RayfleetError):
    """A service can't be deployed, listed or deleted."""


class ClientError(RayfleetError):
    """A request to a running translation service failed. ``status`` is the HTTP status the
    service answered with, or None when no answer came (unreachable, connection lost)."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None,
                 context: str | None = None):
        super().__init__(message, hint=hint, context=context)
        self.status = status


class JobError(RayfleetError):
    """A Ray Job can't be submitted, found, followed or stopped."""


class TrainError(RayfleetError):
    """A training or tuning run failed."""


class DataError(TrainError):
    """Training data is missing, empty or malformed."""


class RegistryError(RayfleetError):
    """The model registry can't be reached, or a model, version or alias is unknown."""


class BulkError(RayfleetError):
    """A bulk translation (translate-file) can't start or failed: input/output paths, options, or the job."""


class CompatError(RayfleetError):
    """An installed library is not the version one of rayfleet's adapters (``rayfleet._compat``) was
    written for: its private internals may have changed shape."""


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")


def exception_line(lines: list[str]) -> str | None:
    """The last ``SomeError: message`` line of a Python traceback in ``lines`` (a job's log, a replica's error)."""
    return next((ln.strip() for ln in reversed(lines) if _EXCEPTION.match(ln.strip())), None)
