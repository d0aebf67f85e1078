"""A service from its spec to a deploy, step by step (``rayfleet serve`` and ``Cluster.serve``).

The translator: API keys read, the model resolved (a ``registry://`` ref to its files),
then ``deploy``. Your own app (``app:``): its working_dir checked and packaged with
Ray's packaging into ``<storage>/apps/<name>/<hash>.zip`` (storage every node sees:
``$RAYFLEET_HOME/storage`` locally, the fleet's storage.path on a fleet), referenced
as a ``file://`` URI in the app's runtime_env (with its requirements and env); then
``deploy``. A package stays where it is as long as a service may use it, unlike an
upload to Ray's GCS, which is dropped when no job or actor refers to it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

from rayfleet.config.loader import load_model, validate_data
from rayfleet.config.service import ServiceSpec
from rayfleet.errors import ConfigError
from rayfleet.serve.deploy import ServeTarget, ServiceStatus, deploy

__all__ = ["load_service", "deploy_service", "package_app"]


def load_service(spec: str | Path | ServiceSpec | dict | None, overrides: dict[str, Any] | None = None,
                 base_dir: Path | None = None) -> tuple[ServiceSpec, Path]:
    """(spec, the directory its relative paths are relative to: the file's, else ``base_dir`` or the current
    one)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if isinstance(spec, ServiceSpec):
        return (spec.model_copy(update=overrides) if overrides else spec), base_dir or Path.cwd()
    if isinstance(spec, dict) or spec is None:
        return validate_data(ServiceSpec, {**(spec or {}), **overrides}, source="command line"), Path.cwd()
    path = Path(spec)
    return load_model(ServiceSpec, path, overrides=overrides), path.resolve().parent


def _check_module(import_path: str, working_dir: Path, has_requirements: bool) -> None:
    module = import_path.split(":")[0]
    top = module.split(".")[0]
    if (working_dir / f"{top}.py").is_file() or (working_dir / top).is_dir():
        return
    if has_requirements or importlib.util.find_spec(top) is not None:
        return  # installed on the cluster from the requirements, or a module the cluster's Python has
    raise ConfigError(f"app.import_path {import_path!r}: there is no {top}.py or {top}/ in the app's "
                      f"working_dir {working_dir}.",
                      hint="Point app.working_dir at the directory that holds the module, or fix app.import_path.")


def package_app(spec: ServiceSpec, base_dir: Path, storage: Path | None) -> dict[str, Any]:
    """The runtime_env of an own app: its working_dir packaged (see the module docstring)."""
    from rayfleet._compat.ray import package_uri_name
    from rayfleet.jobs.own import check_package, read_requirements, write_package
    from rayfleet.registry.refs import default_storage

    app = spec.app
    wd = (base_dir / app.working_dir).resolve()
    if not wd.is_dir():
        raise ConfigError(f"app.working_dir {app.working_dir!r}: no such directory ({wd}).",
                          hint="Give the directory with your app's code, relative to the service spec.")
    requirements = read_requirements(base_dir / app.requirements) if app.requirements else []
    _check_module(app.import_path, wd, bool(requirements))
    check_package(wd)
    root = Path(storage) if storage is not None else default_storage()
    package = root / "apps" / spec.name / package_uri_name(wd)
    if not package.exists():
        try:
            package.parent.mkdir(parents=True, exist_ok=True)
            tmp = package.with_suffix(f".{os.getpid()}.tmp")
            write_package(wd, tmp, include_parent_dir=True)
            tmp.replace(package)
        except OSError as e:
            raise ConfigError(f"Can't write the app's package {package}: {e.strerror}.",
                              hint="The cluster's storage path must be writable from this machine.") from e
    env: dict[str, Any] = {"working_dir": package.as_uri()}
    if requirements:
        env["pip"] = {"packages": requirements, "pip_check": False}
    if app.env:
        env["env_vars"] = dict(app.env)
    return env


def check_build(target: ServeTarget, spec: ServiceSpec, runtime_env: dict[str, Any], *, timeout_s: float) -> None:
    """Build the own app in a Ray Job with its runtime_env (``rayfleet.serve.own``); ServeError with the
    user's error when it fails. The running service is not touched."""
    import json
    import secrets
    import shlex
    import time

    from rayfleet.errors import JobError, ServeError
    from rayfleet.jobs.submit import JobsClient
    from rayfleet.serve.deploy import OWN_APP_IMPORT_PATH, _app_config, _user_error

    args = _app_config(spec, [], None, None)["args"]
    client = JobsClient(target.dashboard_url, dict(target.headers))
    job_id = f"{spec.name}-build-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    module = OWN_APP_IMPORT_PATH.split(":")[0]
    client.submit(f"python -m {module} {shlex.quote(json.dumps(args))}", submission_id=job_id,
                  runtime_env=runtime_env, metadata={"rayfleet.kind": "app-build", "rayfleet.name": spec.name})
    try:
        info = client.wait(job_id, timeout_s=timeout_s, poll_s=0.5)
    except JobError:
        client.stop(job_id)
        raise
    if info.status == "SUCCEEDED":
        return
    text = info.message if info.message.startswith("runtime_env setup failed") else client.logs(job_id)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    where = _user_error(text) or (lines[-1] if lines else info.status)
    raise ServeError(f"Service {spec.name!r} can't be built: {where}", context="\n".join(lines[-15:]) or None,
                     hint="Fix it and run 'rayfleet serve' again; the running service was not touched.")


def deploy_service(target: ServeTarget, spec: str | Path | ServiceSpec | dict | None, *,
                   overrides: dict[str, Any] | None = None, timeout_s: float = 600,
                   progress: Callable[[str], None] | None = None,
                   storage: Callable[[], Path | None] = lambda: None,
                   extra_args: dict[str, Any] | None = None,
                   on_deployed: Callable[[ServiceSpec, Path], None] | None = None,
                   base_dir: Path | None = None) -> ServiceStatus:
    """Deploy (or update in place) the service of ``spec``; see the module docstring. ``storage()``
    is the cluster's shared storage (None: this machine's default), asked only when needed.
    ``on_deployed(spec, base_dir)``: called with the spec as given (before its model is resolved) once
    the service answers."""
    status = _deploy_service(target, load_service(spec, overrides, base_dir), timeout_s, progress, storage,
                             extra_args)
    if on_deployed is not None:
        on_deployed(*load_service(spec, overrides, base_dir))
    return status


def _deploy_service(target, loaded: tuple[ServiceSpec, Path], timeout_s, progress, storage,
                    extra_args) -> ServiceStatus:
    from rayfleet.serve.keys import hash_key, load_api_keys
    from rayfleet.serve.models import for_fleet, resolve_model

    spec, base_dir = loaded
    if spec.app is not None:
        runtime_env = package_app(spec, base_dir, storage())
        if progress:
            progress("building the app in a Ray Job (nothing deployed yet)")
        check_build(target, spec, runtime_env, timeout_s=timeout_s)
        return deploy(target, spec, [], timeout_s=timeout_s, progress=progress, runtime_env=runtime_env)
    keys = load_api_keys(spec.auth, base_dir)
    resolved = resolve_model(spec.model, storage=storage() if spec.model.startswith("registry://") else None)
    resolved = for_fleet(resolved, storage, progress=progress)  # a local directory: onto the fleet's storage
    if resolved != spec.model:
        spec = spec.model_copy(update={"model": resolved})
    return deploy(target, spec, [hash_key(k) for k in keys], timeout_s=timeout_s, progress=progress,
                  api_key=keys[0] if keys else None, extra_args=extra_args)

