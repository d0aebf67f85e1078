"""Training throughput: `rayfleet train` with 1 worker vs a plain PyTorch loop, same run.

    .venv/bin/python benchmarks/train_bench.py [--steps 300] [--port-base 27000]

Both train the same tiny Marian (from_scratch architecture of examples/finetune-tiny.yaml)
on the same synthetic corpus, batch 32, 1 CPU thread, with the same batching code
(``rayfleet.train.loop.pad_batch``). Samples/s count training steps only (forward,
backward, optimizer, batch assembly); the job's fixed start-up (submit, Ray Data,
worker start) and the final evaluation are reported apart, as end-to-end seconds.
The plain loop runs before and after the Ray job and the two are averaged, so a
machine whose load drifts does not favour either side. Target: overhead <= 10 %.

It starts its own local cluster (own RAYFLEET_HOME, ports from --port-base) and
stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _plain_loop(train_file: Path, tok_dir: Path, steps: int, batch_size: int, seed: int = 0) -> float:
    """Samples/s of a single-process loop on the same model, data and batching."""
    import torch

    from rayfleet.config.job import ArchitectureSpec
    from rayfleet.train.data import read_pairs
    from rayfleet.train.loop import lr_lambda, pad_batch
    from rayfleet.train.modeling import load_tokenizer, new_model

    torch.set_num_threads(1)
    tok = load_tokenizer(tok_dir)
    pairs = read_pairs(train_file, "train")
    enc = tok([en for en, _ in pairs], text_target=[fr for _, fr in pairs], truncation=True, max_length=32)
    src, tgt = enc["input_ids"], [ids[:32] for ids in enc["labels"]]
    torch.manual_seed(seed)
    model = new_model(ArchitectureSpec(), tok)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(100, steps))
    steps_per_epoch = len(src) // batch_size
    elapsed = 0.0
    perm = None
    for step in range(steps):
        if step % steps_per_epoch == 0:
            perm = torch.randperm(len(src), generator=torch.Generator().manual_seed(step)).tolist()
        pos = (step % steps_per_epoch) * batch_size
        idx = perm[pos:pos + batch_size]
        t0 = time.perf_counter()
        ids, mask, labels = pad_batch([src[i] for i in idx], [tgt[i] for i in idx], tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        float(loss.detach())
        elapsed += time.perf_counter() - t0
    return steps * batch_size / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("RAYFLEET_BENCH_PORT_BASE", "27000")))
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="rf-bench-"))
    os.environ["RAYFLEET_HOME"] = str(home / "home")
    from rayfleet.cluster import local
    from rayfleet.cluster.state import LocalPorts
    from rayfleet.jobs.submit import JobsClient
    from rayfleet.train.corpus import generate_pairs, write_corpus
    from rayfleet.train.launch import load_job, submit, wait_result
    from rayfleet.train.modeling import build_tokenizer

    files = write_corpus(home / "data", seed=0)
    tok_dir = build_tokenizer(generate_pairs(5000, seed=0), home / "tok", vocab_size=320, max_length=64)
    spec_file = home / "job.yaml"
    spec_file.write_text(f"""\
name: bench
data: {{train: {files.train}, validation: {files.validation}, max_source_length: 32, max_target_length: 32}}
training: {{max_steps: {args.steps}, batch_size: {args.batch_size}, lr: 2.0e-3, warmup_steps: 100}}
scaling: {{num_workers: 1, cpus_per_worker: 1}}
checkpoints: {{every_steps: {args.steps}, keep: 1}}
eval: {{every_steps: {args.steps}, max_samples: 100}}
""")
    print(f"plain PyTorch loop ({args.steps} steps, batch {args.batch_size}, 1 thread) ...", flush=True)
    plain_before = _plain_loop(files.train, tok_dir, args.steps, args.batch_size)
    print(f"  {plain_before:.0f} samples/s", flush=True)

    b = args.port_base + 790
    ports = LocalPorts(gcs=b, dashboard=b + 1, serve=b + 2, client_server=b + 3, dashboard_agent=b + 4,
                       min_worker=b + 10, max_worker=b + 209, min_replica=b + 210, max_replica=b + 409)
    cluster = local.start(ports=ports, num_cpus=4).cluster
    try:
        client = JobsClient(cluster.dashboard_url, local.auth_headers(cluster))
        print("rayfleet train (1 worker) ...", flush=True)
        t0 = time.monotonic()
        launch = submit(client, load_job(spec_file))
        result = wait_result(client, launch.job_id)
        wall = time.monotonic() - t0
    finally:
        local.stop()
    ray_sps = float(result.metrics["train_samples_per_s"])
    print(f"  {ray_sps:.0f} samples/s in the training loop; {wall:.0f} s end to end "
          f"(start-up, data, final eval and registration included)", flush=True)

    print("plain PyTorch loop again ...", flush=True)
    plain_after = _plain_loop(files.train, tok_dir, args.steps, args.batch_size)
    print(f"  {plain_after:.0f} samples/s", flush=True)
    shutil.rmtree(home, ignore_errors=True)  # the second plain loop still needs the data and tokenizer
    plain = (plain_before + plain_after) / 2
    overhead = plain / ray_sps - 1
    print(f"\nplain loop {plain:.0f} samples/s (mean of {plain_before:.0f} and {plain_after:.0f}), "
          f"rayfleet train 1 worker {ray_sps:.0f} samples/s")
    print(f"overhead ratio: {plain / ray_sps:.3f} ({overhead * 100:+.1f} %; target <= +10 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
