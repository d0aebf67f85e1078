"""Training, the honest measure: `rayfleet train` vs a plain PyTorch DDP script, wall clock, same work.

Both run the same job (the tiny Marian of examples/finetune-tiny.yaml, from scratch, on the same
synthetic corpus files): 2 DDP workers (gloo, 1 thread each) on this 2-CPU machine, N steps,
evaluation (greedy translation of the validation sample, BLEU/chrF/exact match) and a checkpoint
(model + optimizer state) every K steps and at the end. The clock runs from the command to its
exit, as a user waits for it:

- rayfleet: ``rayfleet train JOB.yaml --quiet`` on a local cluster of 2 CPUs (the default cluster
  of a 2-core machine; started once, before the rounds): submission, the Ray job, the tokenizer,
  Ray Data's ingest, Ray Train's worker group, training, evaluation, checkpoints to the run dir.
- plain: ``python -m torch.distributed.run --nproc_per_node 2`` on this file's worker: rank 0 builds the
  tokenizer (the same function), every rank reads and tokenizes the files itself and keeps its half,
  then the same training step, data order, schedule, evaluation and checkpoint code (rayfleet.train's
  pure functions: what differs is only what runs around them).

No registration on either side (the job has no ``register:`` block). Rounds interleave, order
rotating; medians. Printed: wall clock, the in-loop samples/s of each (so the fixed start-up and the
per-step cost can be told apart), and the overhead ratio (goal <= 10 %). ``--json FILE`` too.

    .venv/bin/python benchmarks/train_ddp_bench.py --quick    # 3 rounds of 300 steps, about 10 minutes
    .venv/bin/python benchmarks/train_ddp_bench.py            # 3 rounds of 1000 steps
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _job_yaml(data: Path, steps: int, every: int) -> str:
    return f"""\
name: bench-ddp
model: {{base: from_scratch}}
data: {{train: {data / 'train.tsv'}, validation: {data / 'validation.tsv'}, max_source_length: 32, max_target_length: 32}}
training: {{max_steps: {steps}, batch_size: 32, lr: 2.0e-3, warmup_steps: 100, seed: 0}}
scaling: {{num_workers: 2, cpus_per_worker: 1}}
checkpoints: {{every_steps: {every}, keep: 2}}
eval: {{every_steps: {every}, max_samples: 100}}
"""


# ---------------------------------------------------------------------------------------------
# The plain DDP worker (one process per rank, started by torch.distributed.run)
# ---------------------------------------------------------------------------------------------

def worker(spec_file: Path, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from rayfleet.train.data import read_pairs
    from rayfleet.train.launch import load_job
    from rayfleet.train.loop import _order, evaluate, lr_lambda, pad_batch, text_metrics
    from rayfleet.train.modeling import build_tokenizer, load_tokenizer, new_model, save_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    spec = load_job(spec_file)
    t, d, arch = spec.training, spec.data, spec.model.arch
    pairs = read_pairs(d.train, "train")
    if rank == 0:
        build_tokenizer(pairs, out / "tokenizer", vocab_size=arch.vocab_size, max_length=arch.max_positions)
    dist.barrier()
    tok = load_tokenizer(out / "tokenizer")
    mine = pairs[rank::world]
    enc = tok([en for en, _ in mine], text_target=[fr for _, fr in mine], truncation=True,
              max_length=d.max_source_length)
    src, tgt = enc["input_ids"], [ids[:d.max_target_length] for ids in enc["labels"]]
    val = read_pairs(d.validation, "validation")[:spec.eval.max_samples][rank::world]

    torch.manual_seed(t.seed)
    model = new_model(arch, tok)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(0.9, 0.98), weight_decay=t.weight_decay)
    total = t.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.warmup_steps, total))
    per_epoch = max(1, len(src) // t.batch_size)
    step, perm_epoch, perm, train_time, last = 0, -1, None, 0.0, {}
    while step < total:
        epoch = step // per_epoch
        if epoch != perm_epoch:
            perm, perm_epoch = _order(len(src), t.seed, epoch, rank), epoch
        pos = (step % per_epoch) * t.batch_size
        idx = perm[pos:pos + t.batch_size]
        t0 = time.perf_counter()
        ids, mask, labels = pad_batch([src[i] for i in idx], [tgt[i] for i in idx], tok.pad_token_id)
        loss = ddp(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        step += 1
        train_time += time.perf_counter() - t0
        if step % spec.eval.every_steps == 0 or step == total:
            hyps = evaluate(model, tok, [en for en, _ in val], d.max_target_length, torch.device("cpu"))
            parts: list = [None] * world
            dist.all_gather_object(parts, (hyps, [fr for _, fr in val]))
            last = text_metrics([h for hs, _ in parts for h in hs], [r for _, rs in parts for r in rs])
        if (step % spec.checkpoints.every_steps == 0 or step == total) and rank == 0:
            ckpt = out / f"checkpoint-step-{step:07d}"
            save_model(model, tok, ckpt / "model")
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "eval": last},
                       ckpt / "state.pt")
            for old in sorted(out.glob("checkpoint-step-*"))[:-spec.checkpoints.keep]:
                shutil.rmtree(old)
        if step % spec.checkpoints.every_steps == 0 or step == total:
            dist.barrier()   # (Ray Train's report is one too)
    if rank == 0:
        print(json.dumps({"loss": loss_value, **last,
                          "train_samples_per_s": step * t.batch_size * world / train_time}), flush=True)
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

def _run_plain(spec_file: Path, out: Path, port: int) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), str(HERE), "--worker", str(spec_file), str(out)],
                       capture_output=True, text=True, timeout=3600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"plain DDP failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return wall, json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


def _run_rayfleet(spec_file: Path, cluster) -> tuple[float, dict]:
    import re

    from rayfleet.cluster import local
    from rayfleet.jobs.submit import JobsClient
    from rayfleet.train.launch import wait_result

    t0 = time.monotonic()
    r = subprocess.run([str(Path(sys.executable).parent / "rayfleet"), "train", str(spec_file), "--quiet"],
                       capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"rayfleet train failed (exit {r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    job_id = re.search(r"^Submitted job (\S+) ", r.stdout, re.M)[1]
    # the job's result event (its metrics: in-loop samples/s too), read back from the finished job
    result = wait_result(JobsClient(cluster.dashboard_url, local.auth_headers(cluster)), job_id)
    return wall, {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 steps (default 1000)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port-base", type=int, default=28000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return 0
    steps = args.steps or (300 if args.quick else 1000)
    every = max(1, steps // 3)

    work = Path(tempfile.mkdtemp(prefix="rf-train-bench-", dir="/tmp"))
    os.environ["RAYFLEET_HOME"] = str(work / "home")
    from rayfleet.cluster import local
    from rayfleet.cluster.state import LocalPorts
    from rayfleet.train.corpus import write_corpus

    write_corpus(work / "data", seed=0, train_size=5000, validation_size=500)
    spec_file = work / "job.yaml"
    spec_file.write_text(_job_yaml(work / "data", steps, every))
    b = args.port_base + 790
    ports = LocalPorts(gcs=b, dashboard=b + 1, serve=b + 2, client_server=b + 3, dashboard_agent=b + 4,
                       min_worker=b + 10, max_worker=b + 209, min_replica=b + 210, max_replica=b + 409)
    results: dict[str, list[tuple[float, dict]]] = {"rayfleet": [], "plain": []}
    try:
        cluster = local.start(ports=ports, num_cpus=2, directory=work / "home").cluster
        print(f"{steps} steps, evaluation + checkpoint every {every}; 2 workers x 1 thread; {args.rounds} rounds",
              flush=True)
        for r in range(args.rounds):
            for key in (("rayfleet", "plain") if r % 2 == 0 else ("plain", "rayfleet")):
                wall, metrics = (_run_rayfleet(spec_file, cluster) if key == "rayfleet"
                                 else _run_plain(spec_file, work / "plain", b + 500))
                results[key].append((wall, metrics))
                print(f"round {r + 1}/{args.rounds} {key}: {wall:.1f} s; {metrics}", flush=True)
    finally:
        local.stop(directory=work / "home")
        shutil.rmtree(work, ignore_errors=True)
    rep = {k: {"wall_s": statistics.median(w for w, _ in v), "runs": [w for w, _ in v],
               "train_samples_per_s": statistics.median(m.get("train_samples_per_s", float("nan")) for _, m in v),
               "exact_match": [m.get("exact_match") for _, m in v]} for k, v in results.items()}
    ratio = rep["rayfleet"]["wall_s"] / rep["plain"]["wall_s"]
    rep.update(steps=steps, every=every, rounds=args.rounds, overhead_ratio=ratio)
    print()
    print("| variant | wall clock (median) | runs | in-loop samples/s | exact match |")
    print("|---|---|---|---|---|")
    for k in ("rayfleet", "plain"):
        v = rep[k]
        print(f"| {k} | {v['wall_s']:.1f} s | {', '.join(f'{w:.1f}' for w in v['runs'])} | "
              f"{v['train_samples_per_s']:.0f} | {', '.join(str(e) for e in v['exact_match'])} |")
    fixed = rep["rayfleet"]["wall_s"] - rep["plain"]["wall_s"]
    print(f"\nrayfleet / plain DDP, wall clock: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; goal <= +10 %: "
          f"{'met' if ratio <= 1.1 else 'NOT met'}); {fixed:+.1f} s per run")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
