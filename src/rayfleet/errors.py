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
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = [
    "exception_line",
    "RayfleetError",
    "ConfigError",
    "HostNotResolved",
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
    "foreign",
    "describe_foreign",
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


class HostNotResolved(ConfigError):
    """A host name of fleet.yaml does not resolve on this machine."""

    FIX = "add it to DNS or /etc/hosts (here and on the nodes), or write its IP address in fleet.yaml"

    def __init__(self, host: str, reason: str):
        super().__init__(f"Host name {host!r} of the fleet does not resolve on this machine ({reason}).",
                         hint=self.FIX[0].upper() + self.FIX[1:] + ".")
        self.host, self.reason = host, reason


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


# ---- foreign errors -------------------------------------------------------------------------
# How an error raised by another library reads in one of ours: (the exception's class, as
# "module.Class" anywhere in its MRO) -> (reason, hint or None). The first match wins; anything
# else reads as "Type: message".

_UNREACHABLE = "Is the cluster up, and is this its address? Check with: rayfleet status"


def _status(e: BaseException) -> tuple[str, str | None] | None:
    """Ray's dashboard SDKs raise RuntimeError("Request failed with status code N: ...")."""
    m = re.search(r"status code (\d{3})", str(e))
    if m and m.group(1) in ("401", "403"):
        return (f"the cluster refused rayfleet's token (HTTP {m.group(1)})",
                "The token rayfleet sent is not this cluster's: was the cluster started from another "
                "RAYFLEET_HOME, or its token replaced? Restart it with rayfleet down/up.")
    return None


FOREIGN: list[tuple[str, Callable[[BaseException], tuple[str, str | None] | None]]] = [
    ("requests.exceptions.ConnectionError", lambda e: ("can't connect", _UNREACHABLE)),
    ("requests.exceptions.Timeout", lambda e: ("no answer in time", _UNREACHABLE)),
    ("httpx.ConnectError", lambda e: ("can't connect", _UNREACHABLE)),
    ("httpx.TimeoutException", lambda e: ("no answer in time", _UNREACHABLE)),
    ("builtins.ConnectionError", lambda e: (str(e) or "can't connect", _UNREACHABLE)),
    ("mlflow.exceptions.MlflowException", lambda e: (getattr(e, "message", None) or str(e), None)),
    ("builtins.RuntimeError", _status),
]


def describe_foreign(e: BaseException) -> tuple[str, str | None]:
    """(reason, hint) for an exception another library raised, by the FOREIGN table."""
    names = {f"{t.__module__}.{t.__qualname__}" for t in type(e).__mro__}
    for name, read in FOREIGN:
        if name in names:
            got = read(e)
            if got is not None:
                return got
    text = str(e).strip()
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__), None


@contextmanager
def foreign(error: type[RayfleetError], what: str, *, hint: str | None = None) -> Iterator[None]:
    """Inside, an exception of another library becomes ``error("<what>: <reason>")`` (``describe_foreign``);
    ``hint`` when given, else the table's. Our own errors pass through unchanged."""
    try:
        yield
    except RayfleetError:
        raise
    except Exception as e:  # noqa: BLE001 - this is the one place foreign errors are read
        reason, known = describe_foreign(e)
        raise error(f"{what}: {reason}", hint=hint or known) from e
