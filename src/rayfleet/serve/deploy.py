"""Deploy, list and delete services (the translator, or your own Serve apps) on a running cluster.

We use Serve's declarative REST API on the dashboard (Ray's own
``ServeSubmissionClient``), authenticated with the cluster token: the client
needs only HTTP access to the dashboard, and redeploying an app updates it in
place (Serve rolls replicas). Serve's config holds every app at once, so each
call reads the deployed config, changes one app, and writes the whole config.

Serve's state is read through Ray's own REST models (``ray.serve.schema``:
``ServeInstanceDetails``, ``ApplicationDetails``, ``ReplicaDetails``); the deployed
configs are written back exactly as Serve returned them (re-validating and dumping
them could add defaults the user never set).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from rayfleet.config.service import ServiceSpec
from rayfleet.errors import ServeError, exception_line, foreign

if TYPE_CHECKING:
    from ray.serve.schema import ApplicationDetails, DeploymentDetails, ReplicaDetails

# The service's one Serve deployment (serve/app.py); its RUNNING replicas are the service's replicas.
MODEL_DEPLOYMENT = "Translator"
# Translated by every replica at start and through the service before a deploy is called done.
PROBE_TEXT = "Hello."
# Seconds the proxies (HAProxy) may take to load a changed replica list (measured: 0.3-0.7 s).
PROXY_SETTLE_S = 2.0

__all__ = ["ServeTarget", "ServiceStatus", "deploy", "list_services", "delete_service", "model_replicas",
           "replica_options", "IMPORT_PATH", "OWN_APP_IMPORT_PATH", "MODEL_DEPLOYMENT", "PROBE_TEXT"]

IMPORT_PATH = "rayfleet.serve.app:build_app"
OWN_APP_IMPORT_PATH = "rayfleet.serve.own:build"   # rayfleet.serve.own.build wraps a user's app


@dataclass(frozen=True)
class ServeTarget:
    """Where to deploy: the dashboard (with auth headers) and Serve's HTTP address."""

    dashboard_url: str
    headers: dict[str, str]
    serve_host: str
    serve_port: int
    public_host: str
    proxy_location: str = "EveryNode"   # HeadOnly on fleets: one proxy, bound to the head's address

    def url(self, route_prefix: str) -> str:
        return f"http://{self.public_host}:{self.serve_port}{'' if route_prefix == '/' else route_prefix}"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    status: str
    route_prefix: str
    url: str
    replicas: int
    model: str          # the translator's model, or an own app's import path
    message: str
    kind: str = "translator"   # or "app": the user's own Serve application


def replica_options(spec: ServiceSpec, *, only_set: bool = False) -> dict[str, Any]:
    """Serve deployment options from the spec's ``replicas`` and ``resources`` (with ``only_set``: only
    those the spec sets, so an own app keeps its own sizing otherwise). New replicas start next to
    the old ones (``max_surge_percent``), which serve until they are ready: updates without downtime."""
    opts: dict[str, Any] = {"max_surge_percent": 100}
    if not only_set or "resources" in spec.model_fields_set:
        opts["ray_actor_options"] = {"num_cpus": spec.resources.num_cpus, "num_gpus": spec.resources.num_gpus}
    if not only_set or "replicas" in spec.model_fields_set:
        if spec.replicas.autoscaling:
            opts["autoscaling_config"] = {
                "min_replicas": spec.replicas.min,
                "max_replicas": spec.replicas.max,
                "target_ongoing_requests": spec.replicas.target_ongoing_requests,
                "upscale_delay_s": spec.replicas.upscale_delay_s,
                "downscale_delay_s": spec.replicas.downscale_delay_s,
            }
        else:
            opts["num_replicas"] = spec.replicas.max
    return opts


def _client(target: ServeTarget):
    from rayfleet._compat.ray import serve_client

    with foreign(ServeError, f"Can't reach the Ray dashboard at {target.dashboard_url}"):
        return serve_client(target.dashboard_url, target.headers)


@dataclass(frozen=True)
class _State:
    """Serve's state: its typed view of every app, and the deployed configs as Serve returned them."""

    apps: dict[str, "ApplicationDetails"]
    raw: dict[str, Any]

    def configs(self) -> list[dict[str, Any]]:
        """Every app's config, to write back with one app changed (only rayfleet's apps have one;
        an app being deleted has none and is no longer in Serve's config)."""
        live = [name for name, app in self.apps.items() if app.status.value != "DELETING"]
        for name in live:
            if self.apps[name].deployed_app_config is None:
                raise ServeError(f"Serve application {name!r} was deployed outside rayfleet (with serve.run).",
                                 hint="Delete it with 'serve shutdown' or redeploy it through rayfleet.")
        return [self.raw["applications"][name]["deployed_app_config"] for name in live]


STATE_TIMEOUT_S = 30


def _state(target: ServeTarget) -> _State:
    """Serve's state (what Ray's client's get_serve_details reads, with a timeout: Ray's waits without end,
    and a dashboard started again by a restarted head has been seen not to answer for minutes)."""
    from ray.serve.schema import ServeInstanceDetails

    from rayfleet.cluster.dashboard import get_json

    with foreign(ServeError, f"Can't read Serve's state from {target.dashboard_url}"):
        raw = get_json(target.dashboard_url, "/api/serve/applications/", dict(target.headers), STATE_TIMEOUT_S,
                       ServeError, "Serve's API")
        details = ServeInstanceDetails(**raw)
    return _State(details.applications, raw)


def _put(client, target: ServeTarget, apps: list[dict[str, Any]]) -> None:
    config = {
        "proxy_location": target.proxy_location,
        "http_options": {"host": target.serve_host, "port": target.serve_port},
        "applications": apps,
    }
    with foreign(ServeError, "Serve refused the config"):
        client.deploy_applications(config)


def _app_config(spec: ServiceSpec, key_hashes: list[str], extra_args: dict[str, Any] | None,
                runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    if spec.app is not None:
        cfg = {"name": spec.name, "route_prefix": spec.route_prefix, "import_path": OWN_APP_IMPORT_PATH,
               "args": {"import_path": spec.app.import_path, "args": spec.app.args,
                        "options": replica_options(spec, only_set=True), "spec": spec.model_dump(mode="json")}}
    else:
        cfg = {"name": spec.name, "route_prefix": spec.route_prefix, "import_path": IMPORT_PATH,
               "args": {"spec": spec.model_dump(mode="json"), "key_hashes": key_hashes, **(extra_args or {})}}
    if runtime_env:
        cfg["runtime_env"] = runtime_env
    return cfg


def _ingress(app: "ApplicationDetails") -> str:
    """The app's ingress deployment: the translator's ``Translator``, or the one Serve names."""
    if MODEL_DEPLOYMENT in app.deployments:
        return MODEL_DEPLOYMENT
    topology = app.deployment_topology
    return (topology.ingress_deployment if topology else None) or next(iter(app.deployments), MODEL_DEPLOYMENT)


def _running(replicas: list["ReplicaDetails"]) -> list["ReplicaDetails"]:
    return [r for r in replicas if r.state.value == "RUNNING"]


def _replica_count(app: "ApplicationDetails") -> int:
    dep = app.deployments.get(_ingress(app))
    return len(_running(dep.replicas)) if dep else 0


def _draining(dep: "DeploymentDetails") -> bool:
    """A deployment that serves at its target size while replicas it no longer routes to drain
    (STOPPING): Serve calls it HEALTHY only when they are gone, and an ingress replica drains at
    least ``serving.DRAIN_S`` (``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S``) after it left the
    proxy's list."""
    running = _running(dep.replicas)
    return (dep.status.value == "UPDATING" and 0 < len(running) == dep.target_num_replicas
            and all(r.state.value in ("RUNNING", "STOPPING") for r in dep.replicas))


def _settled(app: "ApplicationDetails") -> bool:
    """Every deployment HEALTHY or only draining old replicas (the app serves as deployed)."""
    return app.status.value == "DEPLOYING" and bool(app.deployments) and all(
        dep.status.value == "HEALTHY" or _draining(dep) for dep in app.deployments.values())


def _replaced(app: "ApplicationDetails", before: set[str]) -> bool:
    """An update is in place: the app is settled, and the replicas of each deployment that drains
    are all new (none ran ``before`` the update)."""
    draining = [dep for dep in app.deployments.values() if dep.status.value != "HEALTHY"]
    return _settled(app) and bool(draining) and not any(
        r.replica_id in before for dep in draining for r in _running(dep.replicas))


def _replica_ids(app: "ApplicationDetails | None") -> set[str]:
    return {r.replica_id for dep in app.deployments.values() for r in dep.replicas} if app else set()


def _serves_nothing(app: "ApplicationDetails") -> bool:
    """A deleted app whose replicas only drain (STOPPING): the proxy no longer routes to it."""
    return app.status.value == "DELETING" and all(
        r.state.value == "STOPPING" for dep in app.deployments.values() for r in dep.replicas)


def _failure_message(app: "ApplicationDetails") -> str:
    parts = [app.message] + [dep.message for dep in app.deployments.values()]
    lines = "\n".join(p for p in parts if p).strip().splitlines()
    return "\n".join(lines[-25:])


def _answer(url: str) -> tuple[bool, str]:
    """GET ``url``: (whether a replica answered, what came back). Serve's replicas add
    ``x-request-id`` to every response; HAProxy's own 404 for a route it doesn't know, and its
    502/503/504, have none."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        conn.request("GET", u.path or "/")
        resp = conn.getresponse()
        resp.read()
        conn.close()
    except OSError as e:
        return False, str(e)
    return resp.getheader("x-request-id") is not None or resp.status not in (404, 502, 503, 504), f"HTTP {resp.status}"


def _probe_app(url: str, deadline: float) -> None:
    """An own app answers HTTP at its route: we don't know its API, so any answer from a replica ends the wait."""
    while True:
        answered, last = _answer(url)
        if answered:
            return
        if time.monotonic() > deadline:
            raise ServeError(f"The service is deployed but does not answer at {url}: {last}",
                             hint="Fix the cause above, then run 'rayfleet serve' again.")
        time.sleep(0.5)


def _probe(url: str, api_key: str | None, deadline: float) -> None:
    """The service translates ``PROBE_TEXT`` through its public URL. HAProxy may need a moment
    to take new replicas and routes in: connection failures, 404 (route not there yet) and 5xx
    are retried until ``deadline``; another answer (401: a wrong key) fails at once."""
    from rayfleet import client
    from rayfleet.errors import ClientError

    last = ""
    while True:
        try:
            client.translate(url, [PROBE_TEXT], api_key=api_key, timeout_s=60)
            return
        except ClientError as e:
            last = e.message
            if e.status is not None and e.status < 500 and e.status != 404:  # 404: the proxy's, route not in yet
                break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise ServeError(f"The service is deployed but does not translate: {last}",
                     hint="Fix the cause above, then run 'rayfleet serve' again.")


def deploy(target: ServeTarget, spec: ServiceSpec, key_hashes: list[str], *, timeout_s: float = 600,
           progress: Callable[[str], None] | None = None, api_key: str | None = None,
           extra_args: dict[str, Any] | None = None, runtime_env: dict[str, Any] | None = None) -> ServiceStatus:
    """Deploy or update ``spec`` and wait until it serves: its replicas are RUNNING (each
    translated a probe text at start) and a probe translation through the service's URL
    answered (with ``api_key`` when the service has keys); an own app (``spec.app``) must
    answer HTTP at its URL. Other apps stay as they are.

    ``extra_args`` go to ``build_app`` next to the spec (e.g. ``backend_wrapper``);
    ``runtime_env`` is the app's (an own app's packaged working_dir, requirements, env).
    """
    if key_hashes and not api_key:
        raise ValueError("a service with API keys is probed with one of them: pass api_key")
    client = _client(target)
    state = _state(target)
    configs = state.configs()
    for other in configs:
        if other["name"] != spec.name and other.get("route_prefix") == spec.route_prefix:
            raise ServeError(f"Route prefix {spec.route_prefix!r} is already used by service {other['name']!r}.",
                             hint="Give this service another route_prefix, or delete the other one.")
    previous = state.apps[spec.name].last_deployed_time_s if spec.name in state.apps else 0
    before = _replica_ids(state.apps.get(spec.name))
    new_apps = [a for a in configs if a["name"] != spec.name]
    _put(client, target, new_apps + [_app_config(spec, key_hashes, extra_args, runtime_env)])
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        app = _state(target).apps.get(spec.name)
        status = app.status.value if app else "NOT_STARTED"
        fresh = app is not None and app.last_deployed_time_s > previous
        if progress and status != last:
            progress(status)
            last = status
        replaced = fresh and status == "DEPLOYING" and _replaced(app, before)
        if fresh and (status == "RUNNING" or replaced):
            if replaced:   # the old replicas left Serve's routing table; the proxies take it in next
                time.sleep(PROXY_SETTLE_S)
            result = _status(target, spec.name, app)
            if spec.app is not None:
                if progress:
                    progress("calling its URL")
                _probe_app(result.url, max(deadline, time.monotonic() + 30))
                return result
            if progress:
                progress("translating a probe text")
            _probe(result.url, api_key, max(deadline, time.monotonic() + 30))
            return result
        if fresh and status in ("DEPLOY_FAILED", "UNHEALTHY"):
            text = _failure_message(app)
            where = _user_error(text) if spec.app is not None else None
            kept = " The previous version keeps serving." if previous else ""
            raise ServeError(f"Service {spec.name!r} failed to deploy ({status})" + (f": {where}" if where else "."),
                             context=text or None,
                             hint=f"Fix the cause above, then run 'rayfleet serve' again.{kept}")
        if time.monotonic() > deadline:
            raise ServeError(f"Service {spec.name!r} is not ready after {timeout_s:.0f} s (status {status}).",
                             hint="Watch it with 'rayfleet services'; the Ray dashboard shows replica logs.")
        time.sleep(0.5)


_FRAME = re.compile(r'File "([^"]+)", line (\d+)(?:, in (\S+))?')   # a SyntaxError's frame has no "in"


def _user_error(text: str) -> str | None:
    """``app.py, line 12, in __init__: ZeroDivisionError: division by zero``: the last frame of the
    user's code (in the app's unpacked working_dir, else outside Python's and Ray's own files) in a
    replica's (or the app build's) traceback, and the exception line."""
    frames = [m.groups() for m in _FRAME.finditer(text)]
    own = [f for f in frames if "/working_dir_files/" in f[0] or "/_ray_pkg_" in f[0]]
    if not own:
        own = [f for f in frames if "site-packages" not in f[0] and "/rayfleet/" not in f[0]
               and not re.search(r"/lib/python3\.\d+/", f[0]) and not f[0].startswith("<")]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    exc = exception_line(lines) or (lines[-1] if lines else "")
    if not own:
        return exc or None
    path, line, func = own[-1]
    for marker in ("/working_dir_files/", "/_ray_pkg_"):
        if marker in path:
            path = path.split(marker, 1)[1].split("/", 1)[-1]
            break
    return f"{path}, line {line}" + (f", in {func}" if func else "") + f": {exc}"


def _status(target: ServeTarget, name: str, app: "ApplicationDetails") -> ServiceStatus:
    cfg = app.deployed_app_config
    args = (cfg.args if cfg else None) or {}
    own = cfg is not None and cfg.import_path == OWN_APP_IMPORT_PATH
    prefix = app.route_prefix or (cfg.route_prefix if cfg else None) or "/"
    return ServiceStatus(
        name=name, status="RUNNING" if _settled(app) else app.status.value, route_prefix=prefix, url=target.url(prefix),
        replicas=_replica_count(app),
        model=args.get("import_path", "?") if own else (args.get("spec") or {}).get("model", "?"),
        message=app.message, kind="app" if own else "translator",
    )


def model_replicas(target: ServeTarget, name: str) -> list["ReplicaDetails"]:
    """The model replicas of service ``name``: Serve's replica details (``state``, ``pid``, ``node_ip``, ...)."""
    app = _state(target).apps.get(name)
    dep = app.deployments.get(MODEL_DEPLOYMENT) if app else None
    return list(dep.replicas) if dep else []


def list_services(target: ServeTarget) -> list[ServiceStatus]:
    apps = _state(target).apps
    return [_status(target, name, app) for name, app in sorted(apps.items()) if app.status.value != "DELETING"]


def delete_service(target: ServeTarget, name: str, *, timeout_s: float = 120, wait: bool = True) -> None:
    """Remove one service; the others keep serving. Returns once it is gone: its replicas have
    finished the requests in flight (Serve drains an ingress replica ``serving.DRAIN_S``, 10 s) and
    their resources are free for jobs. ``wait=False``: once the proxies no longer route to it (its replicas
    still drain, holding their CPUs)."""
    client = _client(target)
    state = _state(target)
    live = sorted(n for n, app in state.apps.items() if app.status.value != "DELETING")
    if name not in live:
        known = ", ".join(live) or "none"
        raise ServeError(f"No service named {name!r} (deployed: {known}).",
                         hint="List them with: rayfleet services")
    _put(client, target, [a for a in state.configs() if a["name"] != name])
    deadline = time.monotonic() + timeout_s
    while (app := _state(target).apps.get(name)) is not None and (wait or not _serves_nothing(app)):
        if time.monotonic() > deadline:
            raise ServeError(f"Service {name!r} is still being deleted after {timeout_s:.0f} s.")
        time.sleep(0.5)
    if app is not None:   # draining: the proxies drop its route next
        time.sleep(PROXY_SETTLE_S)
