"""The base of every rayfleet config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Model"]


class Model(BaseModel):
    """Strict config model.

    ``extra="forbid"``: a misspelt key (``replcas:``) is an error with a
    suggestion, never a silently ignored setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
