"""MLflow's SQL store makes ``./mlruns`` in the current directory for its default experiment
unless the (private) variable its tracking server sets names another artifact root."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rayfleet._compat import require

require("mlflow", __name__)

__all__ = ["default_artifact_root"]


@contextmanager
def default_artifact_root(root: str) -> Iterator[None]:
    """While inside, a SQL tracking store MLflow opens puts its default experiment's artifacts under ``root``."""
    from mlflow.server.constants import ARTIFACT_ROOT_ENV_VAR

    saved = os.environ.get(ARTIFACT_ROOT_ENV_VAR)
    os.environ[ARTIFACT_ROOT_ENV_VAR] = root
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ARTIFACT_ROOT_ENV_VAR, None)
        else:
            os.environ[ARTIFACT_ROOT_ENV_VAR] = saved
