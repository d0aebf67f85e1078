"""Your own Serve application, as rayfleet deploys it (runs on the cluster).

A service with ``app: {import_path: ...}`` is deployed with ``build`` as its import
path: Serve runs it in the app's runtime_env (its working_dir unpacked and first on
``sys.path``, its requirements installed). ``build`` imports the user's attribute
(calling it with ``args`` when it is a builder function, as Serve itself does) and
gives the app's ingress deployment the service's replicas and resources, so a
service.yaml sizes any app the same way.

Before a deploy touches the running service, ``python -m rayfleet.serve.own ARGS``
runs as a Ray Job in the same runtime_env and builds the app the same way (without
deploying it): an import error, a missing attribute or an error in the builder fails
that job, with the user's own traceback, and the service is left as it was. (A
failed build inside Serve clears the app's target state, so what keeps serving is
then up to Serve.)
"""

from __future__ import annotations

from typing import Any

__all__ = ["build", "check", "IMPORT_PATH"]

IMPORT_PATH = "rayfleet.serve.own:build"


def build(args: dict[str, Any]):
    """``args``: ``import_path``, ``args`` (the builder's), ``options`` (the ingress deployment's)."""
    from rayfleet._compat.ray import build_app, set_ingress_options

    app = build_app(args["import_path"], args.get("args") or {})
    options = args.get("options") or {}
    if options:
        set_ingress_options(app, options)  # the service's sizing, on the app's own ingress deployment
    return app


def check(args: dict[str, Any]) -> str:
    """Build the app as ``build`` does, without deploying it; a line naming its deployments."""
    from rayfleet._compat.ray import ingress

    return f"ok: {args['import_path']} builds; ingress deployment {ingress(build(args)).name}"


if __name__ == "__main__":
    import json
    import sys

    print(check(json.loads(sys.argv[1])), flush=True)
