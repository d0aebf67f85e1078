"""Your own Serve application, as rayfleet deploys it (runs on the cluster).

A service with ``app: {import_path: ...}`` is deployed with ``build`` as its import
path: Serve runs it in the app's runtime_env (its working_dir unpacked and first on
``sys.path``, its requirements installed). ``build`` imports the user's attribute
(calling it with ``args`` when it is a builder function, as Serve itself does) and
gives the app's ingress deployment the service's replicas and resources, so a
service.yaml sizes any app the same way. An import error, a missing attribute or
an error in the builder is raised here with the user's own traceback, which
``rayfleet serve`` shows as the reason the deploy failed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build", "IMPORT_PATH"]

IMPORT_PATH = "rayfleet.serve.own:build"


def build(args: dict[str, Any]):
    """``args``: ``import_path``, ``args`` (the builder's), ``options`` (the ingress deployment's)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray._common.utils import import_attr

    app = call_user_app_builder_with_args_if_necessary(import_attr(args["import_path"]), args.get("args") or {})
    options = args.get("options") or {}
    if options:
        # The ingress deployment, with its bound arguments kept, gets the service's sizing.
        app._bound_deployment = app._bound_deployment.options(**options)
    return app
