"""The Ray Job entrypoint of ``rayfleet train``: ``python -m rayfleet.train.workload JOB.json``.

It runs on the cluster (the job's driver). ``JOB.json`` (written by
``launch.py``) holds the validated JobSpec with absolute paths, the run name,
the storage path and the registry URI. Steps, each reported as an event
(``events.py``) on stdout, which is the job's log:

1. data: the synthetic corpus is written, or the files are checked in full;
2. tokenizer: trained on the training file (from_scratch) or the base model's;
3. the driver reads and tokenizes small files itself and hands them to the
   workers through the object store; larger ones are read and tokenized by Ray
   Data in parallel tasks (``data.ingest``); the training set is split across
   workers, the validation set is given to every worker;
4. an MLflow run is opened (params), a ``TorchTrainer`` (DDP, gloo on CPU,
   nccl on GPU) runs ``loop.train_loop`` with checkpoints in the storage path
   and ``FailureConfig(max_failures)``;
5. the final checkpoint's model is registered (all or nothing) and the alias set.

Exit status 0 on success; on failure an ``error`` event says why, exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rayfleet.config.job import JobSpec
from rayfleet.errors import TrainError
from rayfleet.jobs.driver import run_driver
from rayfleet.jobs.events import MlflowRun, Phase, TrainResult, emit
from rayfleet.train.launch import TrainJob

__all__ = ["main", "prepare", "build_trainer", "flat_params"]


def flat_params(spec: JobSpec) -> dict[str, Any]:
    """The spec as flat MLflow params (training.lr, scaling.num_workers, ...)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif value is not None:
            out[prefix] = value

    walk("", spec.model_dump(exclude={"search", "register"}))
    return out


def prepare(spec: JobSpec, run_dir: Path, *, registry_uri: str | None = None,
            artifact_root: str | None = None, resumed: bool = False) -> dict[str, str]:
    """Data files and tokenizer on the cluster side: {'train', 'validation', 'tokenizer', 'base', 'ingest'}
    ('ingest': 'driver' or 'ray_data', data.ingest decided for these files).

    A ``registry://`` base model is looked up in the job's registry (``registry_uri``,
    computed by the client: the job's storage path, the fleet's on a fleet); files the
    registry has to download go to the run directory, which every node sees.
    """
    from rayfleet.train.data import check_file, ingest_in_driver, read_pairs

    d = spec.data
    if d.synthetic is not None:
        from rayfleet.train.corpus import write_corpus

        files = write_corpus(run_dir / "data", seed=d.synthetic.seed, train_size=d.synthetic.train_size,
                             validation_size=d.synthetic.validation_size)
        train, validation = str(files.train), str(files.validation)
    else:
        train, validation = str(d.train), str(d.validation)
        check_file(train, "train", max_lines=None)
        check_file(validation, "validation", max_lines=None)
    out = {"train": train, "validation": validation, "base": "",
           "ingest": "driver" if ingest_in_driver(d.ingest, train) else "ray_data"}
    if spec.model.from_scratch:
        from rayfleet.train.modeling import build_tokenizer

        arch = spec.model.arch
        tokenizer = run_dir / "tokenizer"
        if resumed and tokenizer.is_dir():   # the checkpoint's vocabulary: the one the run started with
            out["tokenizer"] = str(tokenizer)
        else:
            out["tokenizer"] = str(build_tokenizer(read_pairs(train, "train"), tokenizer,
                                                   vocab_size=arch.vocab_size, max_length=arch.max_positions))
    else:
        base = spec.model.base
        if base.startswith("registry://"):
            from rayfleet.registry.store import Registry

            registry = Registry(registry_uri or (spec.register.tracking_uri if spec.register else None),
                                artifact_root=artifact_root)
            base = str(registry.resolve(base, cache_dir=run_dir / "base-model"))
        out["tokenizer"] = out["base"] = base
    return out


def build_trainer(spec: JobSpec, paths: dict[str, str], *, run_name: str, storage: str,
                  tracking: dict[str, str] | None, extra_config: dict[str, Any] | None = None,
                  callbacks: list | None = None):
    """A TorchTrainer for the spec (also used by ``tune``, one per trial)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    import ray

    from rayfleet.train.data import read_pairs, text_dataset, tokenized_dataset, tokenized_pairs
    from rayfleet.train.distributed import torch_config
    from rayfleet.train.loop import IN_MEMORY, LoopConfig, train_loop

    d, s = spec.data, spec.scaling
    # validated here too: a search key the loop doesn't know fails before any worker starts
    config = LoopConfig(spec=spec, tokenizer=paths["tokenizer"], base=paths["base"], tracking=tracking,
                        **(extra_config or {})).model_dump(mode="json")
    # Read and tokenized here, before the worker group holds its CPUs: Ray Data's read and
    # tokenize tasks need CPUs of their own, and on a cluster the workers fill (2 workers on
    # 2 CPUs) they would wait forever. The workers load their whole shard anyway.
    datasets = None
    if paths["ingest"] == "driver":   # small files: no Ray Data start-up
        config[IN_MEMORY] = ray.put({
            "train": tokenized_pairs(paths["train"], paths["tokenizer"], d.max_source_length, d.max_target_length),
            "validation": read_pairs(paths["validation"], "validation")})
    else:
        datasets = {
            "train": tokenized_dataset(paths["train"], paths["tokenizer"], d.max_source_length,
                                       d.max_target_length).materialize(),
            "validation": text_dataset(paths["validation"]).materialize(),
        }
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name, storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoints.keep),
            failure_config=FailureConfig(max_failures=spec.failure.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]) if datasets else None,
        torch_config=torch_config(s.use_gpu),
    )


def _quiet_ray_data() -> None:
    """No Ray Data progress bars in the job log (they would drown the events)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _fit(trainer) -> Any:
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as e:
        first = str(e).strip().splitlines()
        raise TrainError(f"Training failed: {first[0] if first else type(e).__name__}",
                         hint="See the full log with: rayfleet jobs logs ID. Raise failure.max_failures "
                              "to survive more worker failures.") from e


def _train(job: TrainJob) -> TrainResult:
    import ray

    spec = job.spec
    run_dir = Path(job.run_dir)
    emit(Phase(name="preparing data and tokenizer"))
    paths = prepare(spec, run_dir, registry_uri=job.registry_uri, artifact_root=job.artifact_root,
                    resumed=job.resumed)
    registry = None
    run_id = None
    if job.registry_uri:
        from rayfleet.registry.store import Registry

        registry = Registry(job.registry_uri, artifact_root=job.artifact_root)
        if job.resumed:   # the run's MLflow run goes on (its metrics so far stay)
            run_id = registry.reopen_run(spec.name, {"rayfleet.job": job.run_name})
        if run_id is None:
            run_id = registry.start_run(spec.name, job.run_name, flat_params(spec),
                                        tags={"rayfleet.job": job.run_name})
        emit(MlflowRun(run_id=run_id))
    ray.init(log_to_driver=True)
    _quiet_ray_data()
    how = "in the driver" if paths["ingest"] == "driver" else "with Ray Data"
    emit(Phase(name=f"reading and tokenizing the data {how}"))
    ok = False
    try:
        trainer = build_trainer(spec, paths, run_name=job.run_name, storage=job.train_storage,
                                tracking={"uri": registry.uri, "run_id": run_id,
                                          "artifact_root": registry.artifact_root} if registry else None)
        emit(Phase(name="starting workers", waits_for_resources=True))
        result = _fit(trainer)
        if result.checkpoint is None:
            raise TrainError("Training finished without a checkpoint; nothing to register.")
        metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        out: dict[str, Any] = {"metrics": metrics, "checkpoint": result.checkpoint.path, "run_id": run_id}
        if registry is not None and spec.register is not None:
            emit(Phase(name=f"registering {spec.register.model_name}"))
            with result.checkpoint.as_directory() as ckpt:
                info = registry.register(spec.register.model_name, Path(ckpt) / "model", run_id,
                                         metrics={k: metrics[k] for k in ("bleu", "chrf", "exact_match", "loss",
                                                                          "step") if k in metrics},
                                         alias=spec.register.alias,
                                         description=f"EN→FR model trained by rayfleet job {spec.name}")
            out.update(model=info.name, version=info.version, aliases=info.aliases)
        ok = True
        return TrainResult(**out)
    finally:
        if registry is not None and run_id is not None:
            try:
                registry.finish_run(run_id, ok)
            except Exception:  # noqa: BLE001 - the run's outcome is reported by the job itself
                pass


def _run(job: TrainJob) -> TrainResult:
    if job.mode == "tune":
        from rayfleet.train.tune import run_tune

        return run_tune(job)
    return _train(job)


def main(argv: list[str] | None = None) -> int:
    return run_driver(argv, "python -m rayfleet.train.workload JOB.json", TrainJob.read, _run,
                      lambda job: job.run_name)


if __name__ == "__main__":
    sys.exit(main())
