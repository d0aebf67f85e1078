"""``registry://`` model references and where the registry lives.

    registry://en-fr/3             version 3 of the registered model en-fr
    registry://en-fr@production    the version the alias 'production' points to

The registry URI: an explicit one, else ``$RAYFLEET_REGISTRY_URI``, else SQLite
in the storage path (``$RAYFLEET_HOME/storage/mlflow.db``). Artifacts go to
``<storage>/mlartifacts``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rayfleet.errors import RegistryError

__all__ = ["PREFIX", "ModelRef", "parse_ref", "is_ref", "default_storage", "registry_uri", "artifact_root",
           "REGISTRY_ENV"]

PREFIX = "registry://"
REGISTRY_ENV = "RAYFLEET_REGISTRY_URI"
_REF = re.compile(r"^registry://(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z_][A-Za-z0-9_-]*))$")
_HINT = "Write registry://NAME/VERSION (e.g. registry://en-fr/3) or registry://NAME@ALIAS (e.g. registry://en-fr@production)."


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}/{self.version}" if self.version else f"{PREFIX}{self.name}@{self.alias}"


def is_ref(value: str) -> bool:
    return value.startswith(PREFIX)


def parse_ref(value: str) -> ModelRef:
    m = _REF.match(value.strip())
    if not m:
        raise RegistryError(f"Got {value!r} for a registry reference; expected registry://NAME/VERSION "
                            "or registry://NAME@ALIAS.", hint=_HINT)
    return ModelRef(m["name"], m["version"], m["alias"])


def default_storage() -> Path:
    from rayfleet.cluster.state import state_dir

    return state_dir() / "storage"


def registry_uri(explicit: str | None = None, storage: str | Path | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get(REGISTRY_ENV):
        return os.environ[REGISTRY_ENV]
    return f"sqlite:///{Path(storage or default_storage()).resolve() / 'mlflow.db'}"


def artifact_root(storage: str | Path | None = None) -> str:
    """Where run artifacts (the models) go: a local path in the storage dir."""
    return str(Path(storage or default_storage()).resolve() / "mlartifacts")
