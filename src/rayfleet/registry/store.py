"""Runs and model versions in MLflow: SQLite by default, PostgreSQL by URI.

``Registry`` is the only place rayfleet talks to MLflow. Contracts:

* ``check()`` is fast and raises ``RegistryError`` when the database can't be
  reached (a bad host, password or database name), before anything is written.
* ``register()`` is all or nothing: on any error the version (and a registered
  model created by this call) is deleted again, so nothing half-registered is
  left behind.
* ``resolve()`` turns ``registry://NAME/VERSION`` or ``registry://NAME@ALIAS``
  into a local directory that ``from_pretrained`` loads, or raises
  ``RegistryError`` naming the model and what exists.

Metrics of a version are stored as version tags (``metric.bleu`` ...), so
``rayfleet models`` can show them without reading runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from rayfleet.errors import RegistryError, foreign
from rayfleet.registry.refs import ModelRef, parse_ref, registry_uri
from rayfleet.registry.refs import artifact_root as _artifact_root

__all__ = ["Registry", "VersionInfo", "ModelInfo", "normalize_uri"]

_METRIC_TAG = "metric."
_MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: list[str]
    metrics: dict[str, float]
    source: str
    run_id: str | None
    created_ms: int
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: list[VersionInfo]
    description: str = ""


def normalize_uri(uri: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only that is installed."""
    scheme = uri.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + uri.split("://", 1)[1]
        if scheme == "postgres":
            return "postgresql://" + uri.split("://", 1)[1]
    return uri


def _redact(uri: str) -> str:
    u = urlparse(uri)
    if u.password:
        return uri.replace(f":{u.password}@", ":***@")
    return uri


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "sqlalchemy.engine"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


class Registry:
    """Runs, model versions and aliases in one MLflow backend."""

    def __init__(self, uri: str | None = None, *, artifact_root: str | None = None,
                 storage: str | Path | None = None):
        """``uri``: explicit, else $RAYFLEET_REGISTRY_URI, else SQLite in ``storage`` (default
        $RAYFLEET_HOME/storage; a fleet's shared storage.path on a fleet). Artifacts of new runs go
        to ``artifact_root``, else ``<storage>/mlartifacts`` when ``storage`` is given."""
        self.uri = normalize_uri(registry_uri(uri, storage))
        self.artifact_root = artifact_root or (_artifact_root(storage) if storage is not None
                                               else _default_artifact_root(self.uri))
        self._client = None

    def __repr__(self) -> str:
        return f"Registry({_redact(self.uri)!r})"

    # -- connection ---------------------------------------------------------------

    def check(self, timeout_s: int = 5) -> None:
        """Raise RegistryError if the backend database can't be reached or created."""
        scheme = self.uri.split("://", 1)[0]
        if scheme.startswith("sqlite"):
            path = _sqlite_path(self.uri)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RegistryError(f"Can't create the registry directory {path.parent}: {e.strerror}.",
                                    hint="Set storage_path (or RAYFLEET_REGISTRY_URI) to a writable place.") from e
            if not os.access(path.parent, os.W_OK):
                raise RegistryError(f"The registry directory {path.parent} is not writable.")
            return
        if scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
            import sqlalchemy

            args = {"connect_timeout": timeout_s} if scheme.startswith(("postgresql", "mysql")) else {}
            try:
                engine = sqlalchemy.create_engine(self.uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
            except ModuleNotFoundError as e:
                raise RegistryError(f"The driver for {scheme} is not installed ({e.name}).",
                                    hint="pip install psycopg2-binary (PostgreSQL).") from e
            except Exception as e:  # noqa: BLE001 - every driver error means "can't reach it"
                reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
                raise RegistryError(f"Can't reach the registry database {_redact(self.uri)}: {reason}",
                                    hint="Check host, port, user, password and database name, and that "
                                         "the server runs (pg_isready -h HOST -p PORT).") from None
            return
        raise RegistryError(f"Got {_redact(self.uri)!r} for the registry URI; expected sqlite:///PATH.db or "
                            "postgresql://USER:PASSWORD@HOST:PORT/DB.")

    @property
    def client(self):
        if self._client is None:
            self.check()
            _quiet_mlflow()
            from mlflow.tracking import MlflowClient

            from rayfleet._compat.mlflow import default_artifact_root

            with foreign(RegistryError, f"The registry at {_redact(self.uri)} can't be opened"), \
                    default_artifact_root(self.artifact_root):  # not ./mlruns
                client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
                client.search_experiments(max_results=1)  # creates/migrates the schema now
            self._client = client
        return self._client

    # -- runs ---------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=str(Path(self.artifact_root) / name))

    def start_run(self, experiment: str, run_name: str, params: dict[str, Any],
                  tags: dict[str, str] | None = None) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self._experiment(experiment), run_name=run_name, tags=tags or {})
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def reopen_run(self, experiment: str, tags: dict[str, str]) -> str | None:
        """The newest run of ``experiment`` with these tags, set RUNNING again; None when there is none."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([exp.experiment_id], filter_string=query, max_results=1,
                                       order_by=["attributes.start_time DESC"])
        if not runs:
            return None
        self.client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                               if isinstance(v, (int, float))])

    def finish_run(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    # -- versions -----------------------------------------------------------------

    def _get_model(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryError(f"Can't read registered model {name!r}: {e.message}") from e

    def register(self, name: str, model_dir: str | Path, run_id: str, *, metrics: dict[str, float],
                 alias: str | None = None, description: str = "") -> VersionInfo:
        """Log ``model_dir`` to the run and register it as a new version of ``name``; all or nothing."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise RegistryError(f"{model_dir} holds no model (config.json is missing); nothing was registered.")
        created_model = False
        version = None
        try:
            if self._get_model(name) is None:
                self.client.create_registered_model(name, description=description or None)
                created_model = True
            self.client.log_artifacts(run_id, str(model_dir), artifact_path=_MODEL_ARTIFACT)
            source = f"{self.client.get_run(run_id).info.artifact_uri}/{_MODEL_ARTIFACT}"
            tags = {f"{_METRIC_TAG}{k}": str(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            version = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
            if alias:
                self.client.set_registered_model_alias(name, alias, version.version)
            return self.show(name, version.version)
        except BaseException as e:
            self._rollback(name, version, created_model)
            if isinstance(e, RegistryError):
                raise
            if isinstance(e, Exception):
                raise RegistryError(f"Registering {name!r} failed, nothing was registered: {e}") from e
            raise

    def _rollback(self, name: str, version, created_model: bool) -> None:
        try:
            if version is not None:
                self.client.delete_model_version(name, version.version)
            if created_model:
                self.client.delete_registered_model(name)
        except Exception:  # noqa: BLE001 - the original error is the one to show
            pass

    def _info(self, mv, aliases: list[str] | None = None) -> VersionInfo:
        tags = dict(mv.tags or {})
        metrics = {}
        for k, v in tags.items():
            if k.startswith(_METRIC_TAG):
                try:
                    metrics[k[len(_METRIC_TAG):]] = float(v)
                except ValueError:
                    pass
        return VersionInfo(name=mv.name, version=str(mv.version), aliases=sorted(aliases if aliases is not None else (mv.aliases or [])),
                           metrics=metrics, source=mv.source, run_id=mv.run_id,
                           created_ms=int(mv.creation_timestamp or 0),
                           tags={k: v for k, v in tags.items() if not k.startswith(_METRIC_TAG)})

    def list_models(self) -> list[ModelInfo]:
        out = []
        for rm in self.client.search_registered_models(max_results=1000):
            versions = self.client.search_model_versions(f"name = '{rm.name}'", max_results=10000)
            aliases: dict[str, list[str]] = {}
            for alias, version in (rm.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            infos = sorted((self._info(v, aliases.get(str(v.version))) for v in versions),
                           key=lambda v: int(v.version))
            out.append(ModelInfo(rm.name, infos, rm.description or ""))
        return sorted(out, key=lambda m: m.name)

    def _known(self, name: str) -> str:
        names = [m.name for m in self.client.search_registered_models(max_results=1000)]
        return ("registered models: " + ", ".join(sorted(names))) if names else "the registry is empty"

    def show(self, name: str, version: str | int) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        if self._get_model(name) is None:
            raise RegistryError(f"No registered model {name!r} ({self._known(name)}).",
                                hint="List them with: rayfleet models")
        try:
            return self._info(self.client.get_model_version(name, str(version)))
        except MlflowException:
            versions = sorted(int(v.version) for v in self.client.search_model_versions(f"name = '{name}'"))
            raise RegistryError(f"Model {name!r} has no version {version} (versions: "
                                f"{', '.join(map(str, versions)) or 'none'}).",
                                hint=f"List them with: rayfleet models --name {name}") from None

    def by_alias(self, name: str, alias: str) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        model = self._get_model(name)
        if model is None:
            raise RegistryError(f"No registered model {name!r} ({self._known(name)}).",
                                hint="List them with: rayfleet models")
        try:
            return self._info(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            aliases = sorted(model.aliases or {})
            raise RegistryError(f"Model {name!r} has no alias {alias!r} (aliases: {', '.join(aliases) or 'none'}).",
                                hint=f"Set one with: rayfleet models promote {name} VERSION --alias {alias}") from None

    def promote(self, name: str, version: str | int, alias: str) -> VersionInfo:
        self.show(name, version)
        self.client.set_registered_model_alias(name, alias, str(version))
        return self.show(name, version)

    def lookup(self, ref: str | ModelRef) -> VersionInfo:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        return self.show(ref.name, ref.version) if ref.version else self.by_alias(ref.name, ref.alias)

    def resolve(self, ref: str | ModelRef, cache_dir: str | Path | None = None) -> Path:
        """A local directory with the model files of a registry ref."""
        info = self.lookup(ref)
        if urlparse(info.source).scheme in ("", "file"):
            from mlflow.utils.file_utils import local_file_uri_to_path

            path = Path(local_file_uri_to_path(info.source))
        else:
            import mlflow.artifacts

            dest = Path(cache_dir or Path.home() / ".cache" / "rayfleet") / info.name / info.version
            dest.mkdir(parents=True, exist_ok=True)
            with foreign(RegistryError, f"Can't download {ref}"):
                path = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(dest),
                                                                tracking_uri=self.uri))
        if not (path / "config.json").is_file():
            raise RegistryError(f"{ref} points to {path}, which holds no model (config.json is missing).",
                                hint="The artifact store may have moved; re-register the model.")
        return path


def _sqlite_path(uri: str) -> Path:
    """The file of sqlite:////abs/path.db (urlparse leaves '//abs/...') or sqlite:///rel.db."""
    rest = uri.split(":///", 1)[1] if ":///" in uri else ""
    if rest.startswith("/"):
        return Path("/" + rest.lstrip("/"))
    return Path(unquote(rest)).resolve()


def _default_artifact_root(uri: str) -> str:
    """A plain local path (MLflow turns file:// URIs given here into file:////...)."""
    if uri.startswith("sqlite:"):
        return str(_sqlite_path(uri).parent / "mlartifacts")
    return _artifact_root()
