"""``registry://`` model references and where the registry lives.

    registry://en-fr/3             version 3 of the registered model en-fr
    registry://en-fr@production    the version the alias 'production' points to

The registry URI: an explicit one, else ``$RAYFLEET_REGISTRY_URI``, else SQLite
in the storage path (``<storage>/mlflow.db``). Artifacts go to
``<storage>/mlartifacts``. The storage path: the job's ``storage_path``; on a
fleet, the fleet's shared ``storage.path`` (``fleet_storage``); else
``$RAYFLEET_HOME/storage``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rayfleet.errors import RegistryError

__all__ = ["PREFIX", "ModelRef", "parse_ref", "is_ref", "default_storage", "fleet_storage", "registry_uri",
           "artifact_root", "REGISTRY_ENV"]

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


def fleet_storage(fleet) -> Path:
    """A fleet's shared storage path (runs, checkpoints, the default registry), as this machine sees it.

    rayfleet writes run directories and reads the registry there from the machine it
    runs on, so the share must be mounted here too, at the same path as on the nodes.
    Raises ConfigError when the fleet has no ``storage:`` and RegistryError when the
    path does not exist here.
    """
    from rayfleet.errors import ConfigError

    if fleet.storage is None:
        raise ConfigError(
            f"Fleet '{fleet.name}' has no shared storage for runs, checkpoints and the model registry.",
            hint="Add 'storage: {path: /mnt/shared}' to fleet.yaml: a directory mounted at the same path on "
                 "every node and on this machine (NFS or similar).")
    path = Path(fleet.storage.path)
    if not path.is_dir():
        raise RegistryError(
            f"The storage path {path} of fleet '{fleet.name}' does not exist on this machine.",
            hint="Mount the fleet's shared storage here at the same path as on the nodes, or run rayfleet "
                 "on a node of the fleet.")
    return path


def registry_uri(explicit: str | None = None, storage: str | Path | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get(REGISTRY_ENV):
        return os.environ[REGISTRY_ENV]
    return f"sqlite:///{Path(storage or default_storage()).resolve() / 'mlflow.db'}"


def artifact_root(storage: str | Path | None = None) -> str:
    """Where run artifacts (the models) go: a local path in the storage dir."""
    return str(Path(storage or default_storage()).resolve() / "mlartifacts")
