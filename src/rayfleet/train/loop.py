"""The per-worker training function that Ray Train runs on every DDP worker.

Contract with the driver (``workload.py``): ``train_loop(config)`` gets a ``LoopConfig``
as a dict (Ray Train's ``train_loop_config``; Tune merges a trial's sampled ``lr``,
``batch_size``, ``warmup_steps`` into it), validated here before anything else. The data:
``train`` (tokenized, split per worker) and ``validation`` (text, not split), as Ray Data
datasets, or from the object store when the driver tokenized small files (``IN_MEMORY``).

Every ``checkpoints.every_steps`` (and at the end) rank 0 saves a checkpoint:
``model/`` (save_pretrained + tokenizer) and ``state.pt`` (optimizer, scheduler,
step). A restarted worker group resumes from the latest one at the same data
position (the order is a function of seed, epoch and rank), so a failure
redoes at most the steps since that checkpoint. Every rank calls
``ray.train.report`` at the same steps (Train V2 makes it a barrier).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from rayfleet.config.job import JobSpec, TrainingSpec

__all__ = ["train_loop", "LoopConfig", "Tracking", "evaluate", "pad_batch", "text_metrics", "lr_lambda"]


class Tracking(BaseModel):
    """Where rank 0 logs metrics: the MLflow run of the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    run_id: str
    artifact_root: str | None = None


class LoopConfig(BaseModel):
    """What every worker gets from the driver: the job, the tokenizer and base model directories,
    the MLflow run (none in a Tune trial), and a trial's search overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: JobSpec
    tokenizer: str
    base: str | None = None
    tracking: Tracking | None = None
    lr: float | None = None
    batch_size: int | None = None
    warmup_steps: int | None = None

    @field_validator("batch_size", "warmup_steps", mode="before")
    @classmethod
    def _whole(cls, v: Any) -> Any:
        return int(v) if isinstance(v, float) else v  # a uniform search samples floats: truncated, as ever

    def training(self) -> TrainingSpec:
        """The spec's training settings with the trial's overrides."""
        overrides = {k: getattr(self, k) for k in ("lr", "batch_size", "warmup_steps") if getattr(self, k) is not None}
        return self.spec.training.model_copy(update=overrides)

_PROGRESS_EVERY_S = 0.5
_EVAL_BATCH = 64


def lr_lambda(warmup: int, total: int):
    """Linear warmup to the peak, then linear decay to 0 at ``total``."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def pad_batch(rows_src: list[list[int]], rows_tgt: list[list[int]], pad_id: int):
    """Padded input_ids, attention_mask and labels (-100 on padding) tensors."""
    import torch

    src_len = max(len(r) for r in rows_src)
    tgt_len = max(len(r) for r in rows_tgt)
    input_ids = torch.full((len(rows_src), src_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows_tgt), tgt_len), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(rows_src, rows_tgt)):
        input_ids[i, :len(s)] = torch.as_tensor(s)
        labels[i, :len(t)] = torch.as_tensor(t)
    return input_ids, (input_ids != pad_id).long(), labels.contiguous()


def text_metrics(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """BLEU and chrF (sacrebleu) and exact match (after trimming spaces)."""
    import sacrebleu

    if not refs:
        return {"bleu": 0.0, "chrf": 0.0, "exact_match": 0.0}
    return {
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 3),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 3),
        "exact_match": round(sum(h.strip() == r.strip() for h, r in zip(hyps, refs)) / len(refs), 4),
    }


def evaluate(model, tokenizer, sources: list[str], max_new_tokens: int, device) -> list[str]:
    """Greedy translations of ``sources``."""
    import torch

    model.eval()
    out: list[str] = []
    with torch.no_grad():
        for i in range(0, len(sources), _EVAL_BATCH):
            enc = tokenizer(sources[i:i + _EVAL_BATCH], padding=True, truncation=True,
                            max_length=max_new_tokens, return_tensors="pt").to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
            out.extend(tokenizer.batch_decode(gen, skip_special_tokens=True))
    model.train()
    return out


def _gather(obj: Any, world: int) -> list[Any]:
    import torch.distributed as dist

    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _load_rows(shard) -> tuple[list[list[int]], list[list[int]]]:
    """This worker's tokenized shard, held in memory for all epochs."""
    src: list[list[int]] = []
    tgt: list[list[int]] = []
    for batch in shard.iter_batches(batch_size=2048, batch_format="pyarrow"):
        src.extend(batch["input_ids"].to_pylist())
        tgt.extend(batch["labels"].to_pylist())
    return src, tgt


def _validation(rows: list[tuple[str, str]], rank: int, world: int, max_samples: int | None
                ) -> tuple[list[str], list[str]]:
    if max_samples is not None:
        rows = rows[:max_samples]
    mine = rows[rank::world]
    return [en for en, _ in mine], [fr for _, fr in mine]


class _Tracker:
    """MLflow metrics from rank 0; a registry hiccup warns instead of killing training."""

    def __init__(self, tracking: Tracking | None):
        self._tracking = tracking
        self._store = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self._tracking:
            return
        from rayfleet.jobs.events import Warning, emit

        try:
            if self._store is None:
                from rayfleet.registry.store import Registry

                self._store = Registry(self._tracking.uri, artifact_root=self._tracking.artifact_root)
            self._store.log_metrics(self._tracking.run_id, metrics, step)
        except Exception as e:  # noqa: BLE001 - any tracking failure is reported, training goes on
            emit(Warning(message=f"could not log metrics to MLflow: {e}"))


@dataclass
class _Run:
    """What one worker's loop carries from step to step."""

    spec: Any                 # JobSpec
    model: Any                # the model (its DDP wrapper in ``ddp`` when world > 1)
    ddp: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    scaler: Any               # a GradScaler for fp16, else None
    amp_dtype: Any            # autocast dtype on CUDA, else None
    device: Any
    rank: int
    world: int
    batch_size: int
    src: list[list[int]]      # this worker's tokenized shard
    tgt: list[list[int]]
    val_src: list[str]        # this worker's part of the validation set
    val_ref: list[str]
    steps_per_epoch: int
    total: int
    step: int = 0
    last_eval: dict[str, float] = field(default_factory=dict)
    resumed: bool = False


IN_MEMORY = "in_memory_data"   # train_loop_config key: the data in the object store (data.ingest driver)


def train_loop(config: dict[str, Any]) -> None:
    from rayfleet.jobs.events import TrainProgress, emit

    config = dict(config)
    in_memory = config.pop(IN_MEMORY, None)
    cfg = LoopConfig.model_validate(config)
    run = _restore_or_init(cfg, in_memory)
    tracker = _Tracker(cfg.tracking if run.rank == 0 else None)
    prom = _prometheus(run) if run.rank == 0 else None
    _announce(run)
    t = run.spec.training
    perm_epoch, perm = -1, None
    window_loss, window_n, window_time, last_emit = 0.0, 0, 0.0, time.monotonic()
    train_time, train_steps = 0.0, 0
    while run.step < run.total:
        epoch = run.step // run.steps_per_epoch
        if epoch != perm_epoch:  # the data order is a function of seed, epoch and rank: a resume keeps it
            perm, perm_epoch = _order(len(run.src), t.seed, epoch, run.rank), epoch
        pos = (run.step % run.steps_per_epoch) * run.batch_size
        t0 = time.perf_counter()
        loss_value = _train_step(run, perm[pos:pos + run.batch_size])
        dt = time.perf_counter() - t0
        train_time, train_steps = train_time + dt, train_steps + 1
        window_loss, window_n, window_time = window_loss + loss_value, window_n + 1, window_time + dt

        now = time.monotonic()
        if run.rank == 0 and (now - last_emit >= _PROGRESS_EVERY_S or run.step == run.total):
            progress = TrainProgress(step=run.step, total_steps=run.total, epoch=epoch + 1,
                                     epochs=math.ceil(run.total / run.steps_per_epoch),
                                     loss=round(window_loss / window_n, 4), lr=run.scheduler.get_last_lr()[0],
                                     samples_per_s=round(window_n * run.batch_size * run.world / window_time, 1))
            emit(progress)
            prom.progress(progress.step, progress.total_steps, progress.loss, progress.samples_per_s)
            window_loss, window_n, window_time, last_emit = 0.0, 0, 0.0, now

        do_eval = run.step % run.spec.eval.every_steps == 0 or run.step == run.total
        do_ckpt = run.step % run.spec.checkpoints.every_steps == 0 or run.step == run.total
        if not (do_eval or do_ckpt):
            continue
        if do_eval:
            _evaluate(run, tracker, loss_value)
            if prom is not None:
                prom.evaluation(run.last_eval)
        metrics = {"step": run.step, "epoch": epoch + 1, "loss": loss_value, **run.last_eval,
                   "train_samples_per_s": round(train_steps * run.batch_size * run.world / max(train_time, 1e-9),
                                                1)}
        _report(run, metrics, checkpoint=do_ckpt)


def _restore_or_init(cfg: LoopConfig, in_memory=None) -> _Run:
    """The model, optimizer and data of this worker: from the latest checkpoint when the worker group
    was restarted, else fresh (the base model, or a new one ``from_scratch``)."""
    import ray.train
    import ray.train.torch
    import torch

    from rayfleet.train.modeling import load_model, load_tokenizer, new_model

    spec, t, ev = cfg.spec, cfg.training(), cfg.spec.eval
    lr, batch_size, warmup = t.lr, t.batch_size, t.warmup_steps
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    tokenizer = load_tokenizer(cfg.tokenizer)

    checkpoint = ray.train.get_checkpoint()
    state: dict[str, Any] | None = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model = load_model(Path(d) / "model")
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)   # tensors and numbers only: storage is shared
    else:
        torch.manual_seed(t.seed)
        model = new_model(spec.model.arch, tokenizer) if spec.model.from_scratch else load_model(cfg.base)
    model.to(device)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    if in_memory is None:   # Ray Data's datasets: this worker's shard of the training set, all of the validation set
        src, tgt = _load_rows(ray.train.get_dataset_shard("train"))
        validation = [(r["en"], r["fr"]) for r in ray.train.get_dataset_shard("validation").iter_rows()]
    else:                   # the driver's: an equal part of the training set for every rank, as Ray Data splits it
        data = ray.get(in_memory)
        src, tgt = (rows[:len(rows) // world * world][rank::world] for rows in data["train"])
        validation = data["validation"]
    val_src, val_ref = _validation(validation, rank, world, ev.max_samples)
    steps_per_epoch = max(1, len(src) // batch_size)
    total = t.max_steps or (t.epochs or 1) * steps_per_epoch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.mixed_precision) if device.type == "cuda" \
        else None
    run = _Run(spec=spec, model=model, ddp=ddp, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
               scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None, amp_dtype=amp_dtype,
               device=device, rank=rank, world=world, batch_size=batch_size, src=src, tgt=tgt, val_src=val_src,
               val_ref=val_ref, steps_per_epoch=steps_per_epoch, total=total)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.step, run.last_eval, run.resumed = state["step"], state.get("eval", {}), True
    return run


def _prometheus(run: _Run):
    """Rank 0's Prometheus gauges, labelled with the run (the Ray job's submission id; a trial's own)."""
    import ray.train

    from rayfleet.jobs.metrics import TrainMetrics

    return TrainMetrics(ray.train.get_context().get_experiment_name(), run.spec.name)


def _announce(run: _Run) -> None:
    """The ``start`` event: each rank's process and node (every rank takes part in the gather)."""
    from rayfleet.jobs.events import TrainStart, emit

    import ray

    where = _gather((os.getpid(), ray.util.get_node_ip_address()), run.world)
    if run.rank == 0:
        emit(TrainStart(total_steps=run.total, steps_per_epoch=run.steps_per_epoch, workers=run.world,
                        pids=[p for p, _ in where], nodes=[n for _, n in where],
                        resumed_from=run.step if run.resumed else None, train_pairs_per_worker=len(run.src)))


def _order(n: int, seed: int, epoch: int, rank: int) -> list[int]:
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch * 1009 + rank)).tolist()


def _train_step(run: _Run, idx: list[int]) -> float:
    """One optimizer step on the rows ``idx`` of the shard; the loss."""
    import torch

    t = run.spec.training
    input_ids, mask, labels = pad_batch([run.src[i] for i in idx], [run.tgt[i] for i in idx],
                                        run.tokenizer.pad_token_id)
    input_ids, mask, labels = input_ids.to(run.device), mask.to(run.device), labels.to(run.device)
    with torch.autocast(device_type="cuda", dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        loss = run.ddp(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
        run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return float(loss.detach())


def _evaluate(run: _Run, tracker: "_Tracker", loss_value: float) -> None:
    """Translate the validation set (each rank its part), score it on all of it, report from rank 0."""
    from rayfleet.jobs.events import Eval, emit

    hyps = _gather((evaluate(run.model, run.tokenizer, run.val_src, run.spec.data.max_target_length, run.device),
                    run.val_ref), run.world)
    run.last_eval = text_metrics([h for hs, _ in hyps for h in hs], [r for _, rs in hyps for r in rs])
    if run.rank == 0:
        emit(Eval(step=run.step, **run.last_eval))
        tracker.log({**run.last_eval, "loss": loss_value}, run.step)


def _report(run: _Run, metrics: dict[str, Any], *, checkpoint: bool) -> None:
    """``ray.train.report`` on every rank (a barrier); with a checkpoint from rank 0 when ``checkpoint``."""
    import ray.train
    import torch

    from rayfleet.jobs.events import Checkpoint, emit
    from rayfleet.train.modeling import save_model

    if not (checkpoint and run.rank == 0):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="rayfleet-ckpt-") as d:
        save_model(run.model, run.tokenizer, Path(d) / "model")
        torch.save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                    "step": run.step, "eval": run.last_eval}, Path(d) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"checkpoint-step-{run.step:07d}")
    emit(Checkpoint(step=run.step))
