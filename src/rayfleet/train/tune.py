"""``rayfleet tune``: Ray Tune over the spec's ``search:`` block, ASHA early stopping.

Runs inside the job's driver (``workload.main`` with mode "tune"). Every trial
is one Ray Train run (the same ``build_trainer`` as ``rayfleet train``) whose
reports reach Tune through ``TuneReportCallback``; ASHA stops weak trials at
evaluation steps. The best trial's final checkpoint is registered like a
training run (one MLflow run for the search: the space as params, each
trial's result as metrics by trial index).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rayfleet.config.job import Distribution, JobSpec
from rayfleet.errors import TrainError
from rayfleet.jobs.events import Phase, Trial, TrainResult, emit
from rayfleet.train.launch import TrainJob

__all__ = ["run_tune", "search_space"]

_KEYS = ("lr", "batch_size", "warmup_steps")


def _sampler(d: Distribution):
    from ray import tune

    if d.choice is not None:
        return tune.choice(d.choice)
    if d.uniform is not None:
        return tune.uniform(*d.uniform)
    if d.loguniform is not None:
        return tune.loguniform(*d.loguniform)
    return tune.randint(*d.randint)


def search_space(spec: JobSpec) -> dict[str, Any]:
    s = spec.search
    if s is None:
        return {}
    return {k: _sampler(getattr(s, k)) for k in _KEYS if getattr(s, k) is not None}


_KEPT = ("exact_match", "bleu", "chrf", "loss", "step")   # the metrics a trial's result keeps


def asha(max_steps: int, grace_steps: int):
    """Ray Tune's ASHA on training steps. A run shorter than the grace period stops no trial early (Ray
    asserts grace <= max_t). stop_last_trials=False: a trial that reaches max_t ends by itself (fit()
    returns and the worker group is shut down) instead of being killed at its last report."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=min(grace_steps, max_steps),
                         stop_last_trials=False)


def run_tune(job: TrainJob) -> TrainResult:
    """Run the job's trials (one TorchTrainer each, ASHA stopping the weak), register the best."""
    from rayfleet.registry.store import Registry
    from rayfleet.train.workload import flat_params, prepare

    spec = job.spec
    s = spec.search
    if s is None:
        raise TrainError("The job spec has no 'search:' block.")
    emit(Phase(name="preparing data and tokenizer"))
    paths = prepare(spec, Path(job.run_dir), registry_uri=job.registry_uri, artifact_root=job.artifact_root)
    registry = Registry(job.registry_uri, artifact_root=job.artifact_root)
    run_id = registry.start_run(spec.name, job.run_name, {**flat_params(spec), "search.samples": job.samples,
                                                          "search.metric": s.metric},
                                tags={"rayfleet.job": job.run_name, "rayfleet.kind": "tune"})
    ok = False
    try:
        tuner = _tuner(job, paths)
        emit(Phase(name=f"running {job.samples} trials", waits_for_resources=True))
        grid = tuner.fit()
        for i, r in enumerate(grid):
            metrics = {k: v for k, v in (r.metrics or {}).items() if k in _KEPT}
            emit(Trial(trial=i, config=r.config, metrics=metrics, error=str(r.error or "")[:200]))
            registry.log_metrics(run_id, {f"trial_{i}.{k}": v for k, v in metrics.items()}, step=i)
        result = _register_best(job, grid, registry, run_id)
        ok = True
        return result
    finally:
        try:
            registry.finish_run(run_id, ok)
        except Exception:  # noqa: BLE001
            pass


def _tuner(job: TrainJob, paths: dict[str, str]):
    """A Tuner whose trials each drive a TorchTrainer of the job, on ``ray.init`` of this job's cluster."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayfleet.train.workload import _quiet_ray_data, build_trainer

    spec, s = job.spec, job.spec.search
    # Tune stops a trial (ASHA) by killing its actor, and with it the trial's TrainController, which
    # then never shuts its worker group down: the workers' placement group (job-scoped) outlives it.
    # Ray Train's detached PlacementGroupCleaner removes it, but it finds the cluster through the
    # state API, which (without RAY_ADDRESS) fails with "Found multiple active Ray instances" when
    # several clusters run on the node, so the CPUs stay reserved and the next trial waits forever.
    # The job's driver gets RAY_ADDRESS from Ray Jobs; hand it to every process of the job.
    address = os.environ.get("RAY_ADDRESS")
    ray.init(log_to_driver=True, runtime_env={"env_vars": {"RAY_ADDRESS": address}} if address else None)
    _quiet_ray_data()
    total = spec.training.max_steps or 10**9
    every = min(spec.eval.every_steps, spec.checkpoints.every_steps)

    def trial(config: dict[str, Any]) -> None:
        trial_id = tune.get_context().get_trial_id()
        trainer = build_trainer(spec, paths, run_name=f"{job.run_name}-{trial_id}", storage=job.train_storage,
                                tracking=None, extra_config=config, callbacks=[TuneReportCallback()])
        trainer.fit()

    return tune.Tuner(
        # The trial only drives its TorchTrainer: no CPU of its own, or on a cluster its workers fill
        # (1 worker beside the translator on 2 cores) 0.99 CPU stays free and nothing ever starts.
        # A placement group bundle can't be all zeros: one byte of memory stands in.
        tune.with_resources(trial, {"CPU": 0, "memory": 1}),
        param_space=search_space(spec),
        tune_config=tune.TuneConfig(
            metric=s.metric, mode=s.mode, num_samples=job.samples, max_concurrent_trials=s.max_concurrent,
            scheduler=asha(total, s.grace_period * every)),
        run_config=tune.RunConfig(name=f"{job.run_name}-tune", storage_path=job.train_storage, verbose=0),
    )


def _register_best(job: TrainJob, grid, registry, run_id: str) -> TrainResult:
    """The best trial's final checkpoint, registered when the spec says so."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    spec, s = job.spec, job.spec.search
    try:
        best = grid.get_best_result(metric=s.metric, mode=s.mode)
    except RuntimeError as e:
        raise TrainError(f"No trial finished: {e}") from e
    ckpt = (best.metrics or {}).get(CHECKPOINT_PATH_KEY)
    if not ckpt or not (Path(ckpt) / "model" / "config.json").is_file():
        raise TrainError("The best trial left no final checkpoint; nothing to register.")
    metrics = {k: v for k, v in best.metrics.items() if k in _KEPT}
    registry.log_metrics(run_id, metrics, step=int(metrics.get("step", 0)))
    out: dict[str, Any] = {"metrics": metrics, "best_config": best.config, "checkpoint": ckpt,
                           "run_id": run_id, "trials": len(grid)}
    if spec.register is not None:
        emit(Phase(name=f"registering {spec.register.model_name}"))
        info = registry.register(spec.register.model_name, Path(ckpt) / "model", run_id, metrics=metrics,
                                 alias=spec.register.alias,
                                 description=f"EN→FR model, best of rayfleet tune {spec.name}")
        out.update(model=info.name, version=info.version, aliases=info.aliases)
    return TrainResult(**out)
