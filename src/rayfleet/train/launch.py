"""The client side of ``rayfleet train`` and ``tune``: check, submit, follow.

``load_job`` reads job.yaml; ``on_fleet`` makes a fleet's shared storage the job's
default storage path (run directories, checkpoints, the default registry); ``preflight`` catches what would fail on the
cluster (missing/empty/malformed data files, an unknown registry ref, an
unreachable registry database) before anything is submitted; ``submit``
submits the Ray Job ``python -m rayfleet.train.workload`` with the job's description in
its environment (``JOB_ENV``), and the driver, on the cluster, as the cluster's user,
creates the run directory and writes ``job.json`` there (the machine that runs rayfleet
writes nothing into the storage: on a fleet its user is not the nodes' user); ``watch``
turns the job's log into events (see ``rayfleet.jobs.events``) until the job ends.

Run layout in the storage path::

    runs/<run>/job.json                 what the job runs (mode 0600: it may hold a DB password)
    runs/<run>/tokenizer/, data/        built by the job (from_scratch, synthetic)
    runs/<run>/checkpoint-step-NNNNNNN/ Ray Train checkpoints (the latest K)
    mlflow.db, mlartifacts/             the default registry
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from rayfleet.config.job import JobSpec
from rayfleet.config.loader import load_model
from rayfleet.errors import JobError, ModelError, RayfleetError, TrainError
from rayfleet.jobs.events import TrainEvent, TrainResult
from rayfleet.jobs.resources import Demand, Usage, check_fits
from rayfleet.jobs.submit import JobsClient, follow_events
from rayfleet.registry.refs import artifact_root, default_storage, fleet_storage, is_ref, registry_uri

__all__ = ["Launch", "load_job", "on_fleet", "place", "preflight", "submit", "resume", "wait_result", "storage_of",
           "JOB_ENV"]

JOB_ENV = "RAYFLEET_TRAIN_JOB"   # the job's description, handed to its driver


class TrainJob(BaseModel):
    """``job.json`` in the run dir: what ``rayfleet train``/``tune`` hands the job's driver
    (``python -m rayfleet.train.workload JOB.json``), written and read through this model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["train", "tune"]
    spec: JobSpec
    run_name: str                   # also the Ray job's submission id
    run_dir: str
    train_storage: str              # Ray Train's storage_path (the runs dir)
    registry_uri: str | None
    artifact_root: str
    samples: int | None = None      # tune: trials to run
    resumed: bool = False           # submitted again by `train --resume`: Ray Train restores the run's checkpoint

    @classmethod
    def read(cls, path: str | Path) -> "TrainJob":
        """The job the driver runs: handed over in ``$RAYFLEET_TRAIN_JOB`` (then written to ``path``, in
        the run directory the driver creates, mode 0600), else read from ``path``."""
        text = os.environ.get(JOB_ENV)
        if text is None:
            return cls.model_validate_json(Path(path).read_text())
        job = cls.model_validate_json(text)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except OSError as e:
            raise JobError(f"Can't write the run directory {path.parent}: {e.strerror}.",
                           hint="The storage path must be writable by the cluster's user (fleet.yaml ssh.user) "
                                "on every node; or set storage_path in the job spec.") from e
        return job


@dataclass(frozen=True)
class Launch:
    job_id: str
    run_dir: Path
    registry_uri: str
    demand: Demand          # what the job asks the cluster for (its workers, or one trial's)
    note: str | None = None  # how 'num_workers: auto' was resolved, when it was


def place(spec: JobSpec, usage: Usage, *, mode: str = "train",
          workers_fix: str = "scaling.num_workers: {n}") -> tuple[JobSpec, Demand, str | None]:
    """The spec as it will run on a cluster that has ``usage``: ``num_workers: auto`` resolved
    from the free CPUs (GPUs), and JobError when it could never be placed (``workers_fix``,
    with ``{n}`` the most workers that fit, is the fix the message offers)."""
    s, note = spec.scaling, None
    if s.num_workers == "auto":
        resource, per = ("GPU", 1.0) if s.use_gpu else ("CPU", s.cpus_per_worker)
        workers = max(1, min(s.max_workers, int(usage.free(resource) // per)))
        note = (f"num_workers auto: {workers} worker(s) ({usage.free(resource):g} of {usage.total(resource):g} "
                f"{resource}s free)")
        s = s.model_copy(update={"num_workers": workers})
        spec = spec.model_copy(update={"scaling": s})
    demand = Demand(f"{'tuning trial' if mode == 'tune' else 'training job'} {spec.name} ({s.num_workers} "
                    f"worker(s))", s.num_workers, s.cpus_per_worker, 1.0 if s.use_gpu else 0.0)
    most = int(usage.total("CPU") // s.cpus_per_worker)
    check_fits(demand, usage, fix=workers_fix.format(n=most) if most >= 1 else
               f"scaling.cpus_per_worker at most {usage.largest_node('CPU'):g}")
    return spec, demand, note


def load_job(path: str | Path) -> JobSpec:
    """job.yaml -> JobSpec with absolute paths (relative ones are relative to the file)."""
    path = Path(path)
    spec = load_model(JobSpec, path)
    return spec.resolve_paths(path.resolve().parent)


def on_fleet(spec: JobSpec, fleet, progress=None) -> JobSpec:
    """The spec as it runs on ``fleet``: without its own storage_path, the fleet's shared storage.path;
    data files and a base model directory of this machine that are not on the fleet's storage, copied
    there (content-addressed, as a served model: ``serve.models.to_storage``).

    The job's driver and workers run on any node, so its run directory, checkpoints,
    default registry and inputs must be where every node (and this machine, which reads the
    registry) sees them. ConfigError when the fleet has no storage and the spec names none;
    RegistryError when the share is not mounted here.
    """
    if spec.storage_path is None:
        try:
            path = fleet_storage(fleet)
        except RayfleetError as e:
            raise type(e)(e.message, hint=f"{e.hint} Or set storage_path in the job spec to a directory every "
                                          "node sees.") from None
        spec = spec.model_copy(update={"storage_path": str(path)})
    if fleet.storage is None:
        return spec
    try:
        shared = fleet_storage(fleet)
    except RayfleetError:   # the job names its own storage_path; the fleet's is not mounted here
        return spec
    from rayfleet.serve.models import to_storage

    data = {k: to_storage(v, shared, progress=progress, kind="data")
            for k in ("train", "validation") if (v := getattr(spec.data, k)) and Path(v).is_file()}
    update: dict = {"data": spec.data.model_copy(update=data)} if data else {}
    base = spec.model.base
    if base.startswith("/") and Path(base).is_dir():
        update["model"] = spec.model.model_copy(update={"base": to_storage(base, shared, progress=progress)})
    return spec.model_copy(update=update) if update else spec


def storage_of(spec: JobSpec) -> Path:
    return Path(spec.storage_path) if spec.storage_path else default_storage()


def _registry_uri(spec: JobSpec) -> str:
    return registry_uri(spec.register.tracking_uri if spec.register else None, storage_of(spec))


def preflight(spec: JobSpec, *, search: bool = False) -> str:
    """Check data, base model and registry; return the registry URI. Raises before any submit."""
    from rayfleet.registry.store import Registry
    from rayfleet.train.data import check_file

    if spec.data.synthetic is None:
        check_file(spec.data.train, "train")
        check_file(spec.data.validation, "validation")
    uri = _registry_uri(spec)
    registry = Registry(uri, artifact_root=artifact_root(storage_of(spec)))
    registry.check()
    base = spec.model.base
    if is_ref(base):
        registry.lookup(base)
    elif not spec.model.from_scratch:
        from rayfleet.serve.models import resolve_model

        try:
            resolve_model(base)
        except ModelError as e:
            raise ModelError(f"model.base: {e.message}", hint=e.hint) from None
    if search and (spec.search is None or not any((spec.search.lr, spec.search.batch_size,
                                                   spec.search.warmup_steps))):
        raise TrainError("The job spec has no search space for 'rayfleet tune'.",
                         hint="Add e.g. 'search: {lr: {loguniform: [1e-4, 1e-2]}}' to the spec.")
    return uri


def _run_name(spec: JobSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def submit(client: JobsClient, spec: JobSpec, *, mode: str = "train", samples: int | None = None,
           env: dict[str, str] | None = None, workers_fix: str = "scaling.num_workers: {n}") -> Launch:
    """Place the job on the cluster (``place``), preflight, write the run directory, submit it."""
    spec, demand, note = place(spec, client.usage(), mode=mode, workers_fix=workers_fix)
    uri = preflight(spec, search=mode == "tune")
    storage = storage_of(spec).resolve()
    run_name = _run_name(spec)
    run_dir = storage / "runs" / run_name
    job = TrainJob(mode=mode, spec=spec, run_name=run_name, run_dir=str(run_dir),
                   train_storage=str(storage / "runs"), registry_uri=uri, artifact_root=artifact_root(storage),
                   samples=samples)
    _submit_job(client, job, run_name, env)
    return Launch(job_id=run_name, run_dir=run_dir, registry_uri=uri, demand=demand, note=note)


def _submit_job(client: JobsClient, job: TrainJob, submission_id: str, env: dict[str, str] | None) -> None:
    entrypoint = f"python -m rayfleet.train.workload {shlex.quote(str(Path(job.run_dir) / 'job.json'))}"
    # The description (it may hold a database password) goes in the job's environment: not on a
    # command line that `ps` shows every user of a node.
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                                "RAY_TRAIN_V2_ENABLED": "1", JOB_ENV: job.model_dump_json(), **(env or {})}}
    client.submit(entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                  metadata={"rayfleet.kind": job.mode, "rayfleet.name": job.spec.name})


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def resume(client: JobsClient, spec: JobSpec, run_id: str, *, env: dict[str, str] | None = None) -> Launch:
    """Submit run ``run_id`` of ``spec`` again (its job failed: a head restart, a node lost): the same run
    directory, where Ray Train finds the run's latest checkpoint and resumes from it, the same settings
    (the run's own ``job.json``) and the same MLflow run; registered once, at the end."""
    runs = storage_of(spec).resolve() / "runs"
    run_dir = runs / run_id
    if not _RUN_ID.fullmatch(run_id) or not run_dir.is_dir():
        raise TrainError(f"No run {run_id!r} in {runs}.",
                         hint="Give the job id that 'rayfleet train' printed ('rayfleet jobs' lists them), of a "
                              "job of this spec on this cluster.")
    try:
        job = TrainJob.model_validate_json((run_dir / "job.json").read_text())
    except OSError as e:
        raise TrainError(f"Can't read run {run_id}'s description {run_dir / 'job.json'}: {e.strerror}.",
                         hint="Resume it as the user the cluster runs as (fleet.yaml ssh.user).") from None
    if job.mode != "train":
        raise TrainError(f"Run {run_id} is a {job.mode} run; only training runs can be resumed.",
                         hint="Run the search again: rayfleet tune JOB.yaml")
    if job.spec.name != spec.name:
        raise TrainError(f"Run {run_id} is a run of job {job.spec.name!r}, not of {spec.name!r}.",
                         hint=f"Resume it with the spec it ran: rayfleet train JOB.yaml --resume {run_id}")
    if not any(run_dir.glob("checkpoint*")):
        raise TrainError(f"Run {run_id} has no checkpoint to resume from (it stopped before its first one).",
                         hint="Start it afresh: rayfleet train JOB.yaml")
    _, demand, _ = place(job.spec, client.usage())
    submission_id = f"{run_id}-resumed-{time.strftime('%H%M%S')}"
    _submit_job(client, job.model_copy(update={"resumed": True}), submission_id, env)
    return Launch(job_id=submission_id, run_dir=run_dir, registry_uri=job.registry_uri or "", demand=demand,
                  note=f"Resuming run {run_id} from its latest checkpoint.")


def wait_result(client: JobsClient, job_id: str, *, on_event=None, poll_s: float = 1.0, on_poll=None,
                on_log=None) -> TrainResult:
    """Follow the job to its end (``events.TrainEvent``s to ``on_event``); return its result event, or
    raise TrainError with the job's error."""
    return follow_events(client, job_id, TrainEvent, on_event=on_event, poll_s=poll_s, on_poll=on_poll,
                         on_log=on_log).result_or_raise(TrainError)
