"""Ray 2.60's internals rayfleet uses, each behind one small function.

- Jobs SDK packaging (``ray._private.runtime_env.packaging``): the size limit, the rules and
  the traversal Ray applies to a working dir, so rayfleet checks and builds packages exactly
  as Ray would.
- Serve: the dashboard's REST client (``ServeSubmissionClient``, the client ``serve deploy``
  uses) and how ``serve run`` turns an import path plus arguments into an application.
- Auth: making an already-imported Ray read its auth mode and token again.
- Train: the torch backend rayfleet extends (gloo bound to the node's interface).
- A node's files and processes: the ``session_latest`` link, the raylet's command line,
  the cluster launcher's state files, the names of Ray's processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from rayfleet._compat import require

require("ray", __name__)

__all__ = [
    "quiet_sdk_loggers", "package_limit", "package_uri_name", "create_package", "walk_package",
    "serve_client", "build_app", "ingress", "set_ingress_options",
    "reload_auth", "torch_backend",
    "SESSION_LATEST", "session_logs", "ray_process_pattern", "RAYLET_COMMAND", "raylet_args",
    "launcher_state_files",
]

# ---- Jobs SDK: packaging a working dir -------------------------------------------------

def quiet_sdk_loggers() -> None:
    """Ray's client-side loggers (packaging, uploads, websocket closes) to WARNING: its Jobs SDK
    modules set them to INFO when they are imported, so they are imported first."""
    import logging

    import ray.dashboard.modules.job.sdk  # noqa: F401

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir"):
        logging.getLogger(name).setLevel(logging.WARNING)


def package_limit() -> int:
    """The largest working-dir package Ray accepts through the Jobs API: its upload size limit
    (the dashboard's request size) or its storage limit (the gRPC message size), the smaller."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return min(GCS_STORAGE_MAX_SIZE, ray_constants.DASHBOARD_CLIENT_MAX_SIZE)


def _rules() -> tuple[bool, list[str]]:
    """How Ray's Jobs SDK packages a working dir from this machine: (respect .gitignore, default excludes)."""
    from ray._private import ray_constants

    return (os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1",
            ray_constants.get_runtime_env_default_excludes())


def package_uri_name(path: Path) -> str:
    """``_ray_pkg_<content hash>.zip``: the name Ray gives ``path``'s package (changes with its content)."""
    from ray._private.runtime_env.packaging import get_uri_for_directory

    include_gitignore, excludes = _rules()
    return get_uri_for_directory(str(path), include_gitignore, excludes=excludes).rsplit("/", 1)[-1]


def create_package(path: Path, dest: Path, *, include_parent_dir: bool = False, logger=None) -> None:
    """Zip ``path`` into ``dest`` exactly as Ray packages a working dir."""
    from ray._private.runtime_env import packaging

    include_gitignore, excludes = _rules()
    packaging.create_package(str(path), dest, include_gitignore=include_gitignore,
                             include_parent_dir=include_parent_dir, excludes=excludes,
                             logger=logger or packaging.default_logger)


def walk_package(path: Path, handler: Callable[[Path], None]) -> None:
    """Call ``handler`` on every path Ray would package from ``path`` (its own traversal and excludes)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    include_gitignore, excludes = _rules()
    _dir_travel(path, [_get_excludes(path, excludes)], handler, include_gitignore=include_gitignore)


# ---- Serve ---------------------------------------------------------------------------------

def serve_client(dashboard_url: str, headers: dict[str, str]):
    """The dashboard's Serve REST client (``ray.dashboard.modules.serve.sdk``): ``deploy_applications``,
    ``get_serve_details``, ``delete_applications``. Raises what Ray raises when it can't connect."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(dashboard_url, headers=dict(headers))


def build_app(import_path: str, args: dict[str, Any]):
    """The application ``import_path`` names (a bound app, or a builder called with ``args``),
    as ``serve run`` and Serve's config deploys build it."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    return call_user_app_builder_with_args_if_necessary(import_attr(import_path), args)


def ingress(app):
    """The ingress deployment of a built application."""
    return app._bound_deployment


def set_ingress_options(app, options: dict[str, Any]) -> None:
    """Apply deployment ``options`` to ``app``'s ingress deployment, its bound arguments kept."""
    app._bound_deployment = app._bound_deployment.options(**options)


# ---- Auth ----------------------------------------------------------------------------------

def reload_auth() -> None:
    """Make this process's Ray read its auth mode and token (from the environment) again: Ray reads
    them once per process; this is the refresh Ray does when it turns token auth on itself."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# ---- Train ---------------------------------------------------------------------------------

def torch_backend() -> type:
    """Ray Train's torch backend class (``on_start(worker_group, backend_config)`` sets up the process group)."""
    from ray.train.torch.config import _TorchBackend

    return _TorchBackend


# ---- A node's files and processes ----------------------------------------------------------

SESSION_LATEST = "session_latest"   # the link to the newest session dir under Ray's temp dir


def ray_process_pattern() -> str:
    """An extended regex (``pgrep -f``) for every Ray process of a node: the list ``ray stop`` kills,
    plus runtime-env processes."""
    import re

    from ray.autoscaler._private.constants import RAY_PROCESSES

    return "|".join([re.escape(keyword) for keyword, _ in RAY_PROCESSES] + ["runtime_env"])


def session_logs(temp_dir: str) -> str:
    """The log dir of the newest session under Ray's ``temp_dir``."""
    return f"{temp_dir}/{SESSION_LATEST}/logs"


def raylet_args(gcs_address: str, session: str) -> tuple[str, str]:
    """Two arguments on the command line of a raylet of that GCS and session (``ray/_private/services.py``)."""
    return f"--gcs-address={gcs_address}", f"--session-name={session}"


RAYLET_COMMAND = "raylet/raylet"    # the raylet binary, as its command line shows it


def launcher_state_files(cluster_name: str, directory: str) -> list[str]:
    """The cluster launcher's local-provider state of ``cluster_name`` in ``directory``
    (``ray/autoscaler/_private/local/config.py``)."""
    return [f"{directory}/cluster-{cluster_name}.{ext}" for ext in ("state", "lock")]
