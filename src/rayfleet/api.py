"""rayfleet's Python API: one object per cluster, the same steps the CLI takes.

    import rayfleet

    c = rayfleet.connect()                 # the local cluster (or ./fleet.yaml when none runs)
    c = rayfleet.connect("fleet.yaml")     # a fleet
    job = c.submit(["python", "train.py"], working_dir=".")
    end = job.follow(on_line=print)        # end.exit_code: 0 when it succeeded
    c.serve("service.yaml")                # the translator, or your own Serve app (app: import_path)
    c.translate(["Hello."])

Which cluster a call uses, and how a submit, a deploy or a training run goes step
by step, is decided here (and in the modules it calls); ``rayfleet``'s CLI parses
options, calls these methods and prints.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rayfleet.cluster.target import Target, resolve_target
from rayfleet.config.service import ServiceSpec
from rayfleet.jobs.submit import JobInfo, JobsClient
from rayfleet.serve.deploy import ServeTarget, ServiceStatus

logger = logging.getLogger("rayfleet")

__all__ = ["connect", "Cluster", "Job", "TrainRun", "FileRun", "STORAGE_ENV"]

STORAGE_ENV = "RAYFLEET_STORAGE"   # what a submitted job sees: the cluster's (shared) storage


def connect(fleet: str | Path | None = None) -> "Cluster":
    """The cluster to work on: the fleet of ``fleet`` (a fleet.yaml); without it the running local
    cluster, else ./fleet.yaml. ClusterNotRunning / ConfigError when there is none."""
    return Cluster(resolve_target(fleet))


@dataclass
class Job:
    """A job submitted with ``Cluster.submit``."""

    cluster: "Cluster"
    id: str
    name: str
    demand: Any

    def info(self) -> JobInfo:
        return self.cluster.jobs_client.info(self.id)

    def logs(self) -> str:
        return self.cluster.jobs_client.logs(self.id)

    def stop(self, *, timeout_s: float = 60) -> str:
        """Stop the job; its final status."""
        client = self.cluster.jobs_client
        if client.stop(self.id):
            return client.wait(self.id, timeout_s=timeout_s).status
        return client.info(self.id).status

    def follow(self, *, on_line: Callable[[str], None] | None = None,
               on_waiting: Callable[[str], None] | None = None, unplaceable_timeout_s: float = 120):
        """Stream the log to ``on_line`` until the job ends; a ``JobEnd`` (``exit_code``, ``info``, ``tail``).

        ``on_waiting`` gets a line now and then while the job waits: to start (Ray places its
        entrypoint and sets up its environment), or for resources its tasks and actors asked for
        and the cluster can't give now (with who holds them). A job that waits for more than any
        node has and prints nothing for ``unplaceable_timeout_s`` is stopped (JobError)."""
        import time

        from rayfleet.errors import JobError
        from rayfleet.jobs import own
        from rayfleet.jobs.resources import PendingWatch, StallGuard

        client = self.cluster.jobs_client
        holders = self.cluster.holders(self.id)
        entry = StallGuard(self.demand, client.usage, holders, timeout_s=unplaceable_timeout_s)
        entry.placing = True
        inner = PendingWatch(client.usage, holders, timeout_s=unplaceable_timeout_s)
        state = {"running": False, "checked": float("-inf"), "said": float("-inf")}

        def say(text: str) -> None:
            if on_waiting is not None:
                on_waiting(text)

        def started() -> None:
            state["running"] = True
            entry.progressed(started=True)

        def poll() -> None:
            now = time.monotonic()
            if not state["running"] and now - state["checked"] >= 5:
                state["checked"] = now
                if self.info().status != "PENDING":
                    started()
                elif now - state["said"] >= 30:
                    state["said"] = now
                    say("The job is pending: Ray is placing it and setting up its environment ...")
            line = inner.tick() if state["running"] else entry.tick()
            if line:
                say(line)

        def line(text: str) -> None:
            if not state["running"]:
                started()
            inner.progressed()
            if on_line is not None:
                on_line(text)

        try:
            return own.follow(client, self.id, on_line=line, on_poll=poll)
        except JobError:
            self.stop()
            raise


@dataclass
class TrainRun:
    """A submitted training or tuning job (``Cluster.train``/``tune``)."""

    cluster: "Cluster"
    id: str
    run_dir: Path
    demand: Any
    note: str | None

    def guard(self, *, timeout_s: float = 120):
        from rayfleet.jobs.resources import StallGuard

        return StallGuard(self.demand, self.cluster.jobs_client.usage, self.cluster.holders(self.id),
                          timeout_s=timeout_s)

    def wait(self, *, on_event=None, on_poll=None, on_log=None):
        """Follow the job to its end, each ``rayfleet.jobs.events.TrainEvent`` to ``on_event``; return the
        ``TrainResult`` (``.metrics``, ``.model``, ``.version``: the registered version). A JobError
        raised while following (e.g. by a guard in ``on_poll``) stops the job."""
        from rayfleet.errors import JobError
        from rayfleet.train.launch import wait_result

        client = self.cluster.jobs_client
        try:
            return wait_result(client, self.id, on_event=on_event, on_poll=on_poll, on_log=on_log)
        except JobError:
            client.stop(self.id)
            raise


@dataclass
class FileRun:
    """A submitted bulk translation (``Cluster.translate_file``)."""

    cluster: "Cluster"
    id: str
    job: Any   # rayfleet.bulk.plan.BulkJob

    def guard(self, *, timeout_s: float = 120):
        from rayfleet.bulk import launch
        from rayfleet.jobs.resources import StallGuard

        return StallGuard(launch.demand(self.job), self.cluster.jobs_client.usage, self.cluster.holders(self.id),
                          timeout_s=timeout_s)

    def wait(self, *, on_event=None, on_poll=None, on_log=None):
        """Follow the job to its end, each ``rayfleet.jobs.events.BulkEvent`` to ``on_event``; return the
        ``BulkResult`` (lines translated, bad lines, output). A JobError while following stops the job."""
        from rayfleet.bulk import launch
        from rayfleet.errors import JobError

        client = self.cluster.jobs_client
        try:
            return launch.follow(client, self.id, on_event=on_event, on_poll=on_poll, on_log=on_log)
        except JobError:
            launch.stop(client, self.id)
            raise

    def stop(self) -> str:
        from rayfleet.bulk import launch

        return launch.stop(self.cluster.jobs_client, self.id)


class Cluster:
    """A running rayfleet cluster (local or a fleet): jobs, services, models."""

    def __init__(self, target: Target):
        self.target = target
        self._jobs: JobsClient | None = None

    def __repr__(self) -> str:
        return f"<rayfleet.Cluster {self.description}>"

    # -- where it is --------------------------------------------------------------------------------
    @property
    def description(self) -> str:
        return self.target.description

    @property
    def serve_target(self) -> ServeTarget:
        return self.target.serve

    @property
    def dashboard_url(self) -> str:
        return self.target.serve.dashboard_url

    @property
    def address(self) -> str:
        """What ``ray.init`` connects to: the local GCS address, or a fleet's Ray Client address."""
        if self.target.local is not None:
            return self.target.local.gcs_address
        fleet = self.target.fleet
        return f"ray://{fleet.head.address}:{fleet.ports.client_server}"

    @property
    def token_path(self) -> Path | None:
        """The cluster's auth token file (None: a fleet without auth)."""
        if self.target.local is not None:
            return Path(self.target.local.token_path)
        from rayfleet.cluster import fleet as fleet_mod

        return fleet_mod.paths(self.target.fleet).token if self.target.fleet.auth_enabled else None

    def init(self, **kwargs: Any):
        """``ray.init`` on this cluster with its auth token (for notebooks and scripts)."""
        import ray

        from rayfleet._compat.ray import reload_auth
        from rayfleet.cluster.state import auth_env

        if self.token_path is not None:
            os.environ.update(auth_env(self.token_path))
            reload_auth()  # Ray read them once already if it was imported: init works after `import ray`
        fleet = self.target.fleet
        if fleet is not None and fleet.security.tls and "_credentials" not in kwargs:
            # Ray Client to a fleet with mutual TLS: the fleet's CA and this machine's client certificate
            from rayfleet.cluster import fleet as fleet_mod
            from rayfleet.cluster.tls import client_credentials

            kwargs["_credentials"] = client_credentials(fleet_mod.paths(fleet).dir, fleet.name)
        try:
            return ray.init(address=self.address, **kwargs)
        except ConnectionAbortedError as e:
            # Ray Client's proxy on the head starts one server per client; on a loaded head that start
            # failed once in a CI run ("Starting Ray client server failed"). Once more, then the error.
            if not self.address.startswith("ray://") or "Starting Ray client server failed" not in str(e):
                raise
            logger.warning("Ray Client: the head could not start a server for this client (%s); trying once more",
                           str(e).strip().splitlines()[-1])
            ray.shutdown()
            time.sleep(2)
            return ray.init(address=self.address, **kwargs)

    @property
    def jobs_client(self) -> JobsClient:
        if self._jobs is None:
            self._jobs = JobsClient(self.dashboard_url, dict(self.target.serve.headers))
        return self._jobs

    def holders(self, job_id: str) -> Callable[[], list[str]]:
        """``() -> [str]``: who holds resources besides ``job_id`` (running jobs, services), for waiting lines."""
        def holders() -> list[str]:
            from rayfleet.serve.deploy import list_services

            out = [f"job {j.id} ({j.kind})" for j in self.jobs_client.list()
                   if j.id != job_id and j.status in ("PENDING", "RUNNING")]
            out += [f"service {s.name} ({s.replicas} replica(s))" for s in list_services(self.serve_target)
                    if s.replicas]
            return out
        return holders

    # -- any program ----------------------------------------------------------------------------------
    def submit(self, entrypoint: str | Sequence[str], *, working_dir: str | Path | None = None,
               requirements: str | Path | None = None, env: Sequence[str] | dict[str, str] | None = None,
               num_cpus: float = 0, num_gpus: float = 0, resources: dict[str, float] | str | None = None,
               name: str | None = None) -> Job:
        """Run a program as a Ray Job (``working_dir`` uploaded, ``requirements`` installed for it).
        Everything is checked before anything is submitted. The job sees ``$RAYFLEET_STORAGE``: the
        cluster's storage (a fleet's shared storage.path), e.g. for Ray Train's ``storage_path``."""
        from rayfleet.jobs import own

        sub = own.prepare(entrypoint, working_dir=working_dir, requirements=requirements, env=env,
                          num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, name=name)
        storage = self._storage_if_any()
        if storage is not None:
            sub.runtime_env["env_vars"].setdefault(STORAGE_ENV, str(storage))
        job_id = own.submit(self.jobs_client, sub)
        return Job(self, job_id, sub.name, own.demand(sub))

    def job(self, job_id: str) -> Job:
        from rayfleet.jobs.resources import Demand

        info = self.jobs_client.info(job_id)
        return Job(self, info.id, info.name, Demand(f"job {info.name}", 1, 0.0))

    def jobs(self) -> list[JobInfo]:
        """Every job: submitted programs, training, tuning and file translations (``kind``)."""
        return self.jobs_client.list()

    # -- rayfleet's own jobs --------------------------------------------------------------------------
    def train(self, job: str | Path | Any, *, mode: str = "train", samples: int | None = None,
              num_workers: int | None = None, workers_fix: str = "num_workers={n}",
              resume: str | None = None) -> TrainRun:
        """Submit a training (``mode="tune"``: a search) job: a job.yaml path or a ``JobSpec``. ``resume``: the
        id of an earlier run of this job that failed, run again from its latest checkpoint."""
        from rayfleet.train import launch as train_launch
        from rayfleet.train.launch import load_job, on_fleet, submit

        spec = load_job(job) if isinstance(job, (str, Path)) else job
        if num_workers is not None:
            spec = spec.model_copy(update={"scaling": spec.scaling.model_copy(update={"num_workers": num_workers})})
        if self.target.fleet is not None:  # runs, checkpoints and the default registry on the shared storage
            spec = on_fleet(spec, self.target.fleet)
        if resume is not None:
            launch = train_launch.resume(self.jobs_client, spec, resume)
        else:
            launch = submit(self.jobs_client, spec, mode=mode, samples=samples, workers_fix=workers_fix)
        return TrainRun(self, launch.job_id, launch.run_dir, launch.demand, launch.note)

    def tune(self, job: str | Path | Any, *, samples: int = 4, **kwargs: Any) -> TrainRun:
        return self.train(job, mode="tune", samples=samples, **kwargs)

    def translate_file(self, input_path: str | Path, output_path: str | Path, *, model: str | None = None,
                       **options: Any) -> FileRun:
        """Translate a JSON Lines file with Ray Data (``model``: hub id, directory or registry ref, default
        the EN→FR translator; other options as ``rayfleet translate-file``'s: field, output_field, backend,
        part_size, batch_size, actors, cpus_per_actor, gpus_per_actor, max_new_tokens, restart)."""
        from rayfleet.bulk import launch
        from rayfleet.config.service import DEFAULT_MODEL

        fleet = self.target.fleet
        job = launch.prepare(Path(input_path), Path(output_path), model=model or DEFAULT_MODEL,
                             fleet_name=fleet.name if fleet else None,
                             fleet_storage=fleet.storage.path if fleet and fleet.storage else None, **options)
        return FileRun(self, launch.submit(self.jobs_client, job), job)

    # -- services -------------------------------------------------------------------------------------
    def serve(self, spec: str | Path | ServiceSpec | dict | None = None, *, overrides: dict[str, Any] | None = None,
              timeout_s: float = 600, progress: Callable[[str], None] | None = None,
              extra_args: dict[str, Any] | None = None) -> ServiceStatus:
        """Deploy (or update in place) a service: a service.yaml path, a ``ServiceSpec``, a dict, or
        None for the default translator; the translator or your own Serve app (``app:``). Returns
        when it answers through its URL; ServeError with the replica's error when it can't start
        (the previous version keeps serving)."""
        from rayfleet.serve.service import deploy_service

        return deploy_service(self.serve_target, spec, overrides=overrides, timeout_s=timeout_s, progress=progress,
                              storage=self._serve_storage, extra_args=extra_args, on_deployed=self._keep_spec)

    # What rayfleet deployed, kept on this machine: a cluster that lost its services (its head started
    # afresh, without a store) gets them again from `rayfleet up` (``reapply_services``).
    def _specs_dir(self) -> Path:
        from rayfleet.cluster import fleet as fleet_mod
        from rayfleet.cluster.state import state_dir

        if self.target.fleet is not None:
            return fleet_mod.paths(self.target.fleet).dir / "services"
        return state_dir() / "services"

    def _keep_spec(self, spec: ServiceSpec, base_dir: Path) -> None:
        d = self._specs_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = d / f".{spec.name}.tmp"
        tmp.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "base_dir": str(base_dir)}))
        tmp.replace(d / f"{spec.name}.json")

    def reapply_services(self, *, timeout_s: float = 600, progress: Callable[[str], None] | None = None
                         ) -> dict[str, str | None]:
        """Deploy again every service rayfleet deployed on this cluster that it no longer runs (a head started
        afresh, without a store, has none): {name: None when deployed, else the error}."""
        from rayfleet.errors import RayfleetError
        from rayfleet.serve.service import deploy_service

        d = self._specs_dir()
        kept = sorted(d.glob("*.json")) if d.is_dir() else []
        if not kept:
            return {}
        running = {s.name for s in self.services()}
        out: dict[str, str | None] = {}
        for path in kept:
            rec = json.loads(path.read_text())
            spec = ServiceSpec.model_validate(rec["spec"])
            if spec.name in running:
                continue
            try:
                deploy_service(self.serve_target, spec, timeout_s=timeout_s, progress=progress,
                               storage=self._serve_storage, base_dir=Path(rec["base_dir"]))
                out[spec.name] = None
            except RayfleetError as e:
                out[spec.name] = e.message
        return out

    def forget_services(self) -> None:
        """``down``: the cluster is stopped on purpose; the next ``up`` starts without services."""
        import shutil

        shutil.rmtree(self._specs_dir(), ignore_errors=True)

    def _serve_storage(self) -> Path | None:
        """Where a service's files go (a registry version's, an app's package). With
        $RAYFLEET_REGISTRY_URI set, a fleet without mounted storage still serves registry refs."""
        from rayfleet.errors import RayfleetError
        from rayfleet.registry.refs import REGISTRY_ENV

        try:
            return self.storage
        except RayfleetError:
            if not os.environ.get(REGISTRY_ENV):
                raise
            return None

    def services(self) -> list[ServiceStatus]:
        from rayfleet.serve.deploy import list_services

        return list_services(self.serve_target)

    def delete_service(self, name: str) -> None:
        from rayfleet.serve.deploy import delete_service

        delete_service(self.serve_target, name)
        (self._specs_dir() / f"{name}.json").unlink(missing_ok=True)

    def service_url(self, name: str | None = None) -> str:
        """The URL of service ``name`` (None: the service at route prefix /)."""
        from rayfleet.errors import ServeError

        if name is None:
            return self.serve_target.url("/")
        for s in self.services():
            if s.name == name:
                return s.url
        raise ServeError(f"No service named {name!r}.", hint="List them with: rayfleet services")

    def translate(self, texts: str | Sequence[str], *, service: str | None = None, api_key: str | None = None,
                  timeout_s: float = 120):
        """Translate with a running translation service; a str for a str, a list for a list."""
        from rayfleet import client

        single = isinstance(texts, str)
        out = client.translate(self.service_url(service), [texts] if single else list(texts), api_key=api_key,
                               timeout_s=timeout_s)
        return out[0] if single else out

    # -- models ---------------------------------------------------------------------------------------
    @property
    def storage(self) -> Path | None:
        """The cluster's shared storage (runs, registry, app packages); None: this machine's default
        ($RAYFLEET_HOME/storage, the local cluster's). RegistryError/ConfigError when a fleet has none
        or it is not mounted here."""
        from rayfleet.registry.refs import fleet_storage

        return fleet_storage(self.target.fleet) if self.target.fleet is not None else None

    def _storage_if_any(self) -> Path | None:
        """The storage a job is told about: the fleet's when it has one mounted here, else this machine's."""
        from rayfleet.errors import RayfleetError
        from rayfleet.registry.refs import default_storage

        try:
            return self.storage or default_storage()
        except RayfleetError:
            return None

    def models(self):
        """Registered models with their versions (the cluster's default registry or $RAYFLEET_REGISTRY_URI)."""
        from rayfleet.registry.refs import REGISTRY_ENV
        from rayfleet.registry.store import Registry

        if os.environ.get(REGISTRY_ENV):
            return Registry(None).list_models()
        return Registry(storage=self.storage).list_models()
