"""fleet.yaml's ``monitoring:`` (cluster/monitoring.py runs what it asks for)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from rayfleet.config.base import Model

__all__ = ["MonitoringSpec", "is_duration"]

Port = Annotated[int, Field(ge=1, le=65535)]


def is_duration(value: str) -> bool:
    """A Prometheus duration: 7d, 12h, 1h30m, 500ms."""
    return re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", value) is not None


class MonitoringSpec(Model):
    """Prometheus on the head, run by rayfleet (the head's own ``prometheus`` binary, e.g. Debian's package),
    scraping every node's metrics through Ray's service discovery; on the head's loopback, reached from
    your machine through SSH (``rayfleet metrics url``)."""

    enabled: bool = Field(default=False, description="Run Prometheus with the cluster (up starts it, down stops it).")
    port: Port = Field(default=9090, description="Its port on the head's loopback.")
    retention: str = Field(default="7d", description="How long it keeps metrics (a Prometheus duration: 7d, 12h).")
    prometheus_path: str = Field(default="prometheus",
                                 description="The Prometheus binary on the head: a path, or a name on its PATH.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        return {"enabled": v} if isinstance(v, bool) else v   # `monitoring: true`

    @field_validator("retention")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not is_duration(v):
            raise ValueError(f"{v!r} is not a Prometheus duration: write e.g. 7d, 12h, 2w")
        return v
