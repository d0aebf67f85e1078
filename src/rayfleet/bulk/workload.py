"""The Ray Job entrypoint of ``translate-file``: ``python -m rayfleet.bulk.workload JOB_JSON``.

It runs on the cluster (the job's driver, on the head node). Steps, reported
as events (``rayfleet.jobs.events``: one ``RAYFLEET_EVENT {...}`` line each)
on stdout, which is the job's log:

1. checks the paths, takes the work dir's lock (one writer per output), scans
   and hashes the input, and compares it with the manifest of an earlier run
   (a changed input or changed options are refused; ``--restart`` starts over);
2. ``start``: how many lines and parts, how many parts are already done;
3. Ray Data: the missing parts' chunks -> ``map_batches(ChunkTranslator)`` on
   an autoscaling actor pool; the driver collects the rows of each part and
   writes the part atomically as soon as all its lines are in (``progress``
   events as rows arrive);
4. every part done: the parts are joined in order into the output, the bad
   lines into OUT.errors, and the work dir is removed; ``result``.

Exit status 0 on success (bad lines included); on failure an ``error`` event
says why, exit 1. Parts written before a failure or a kill are kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rayfleet.bulk.plan import (BulkError, BulkJob, Layout, Manifest, Scan, assemble, num_parts, part_lines,
                                plan_chunks, scan_input, write_atomic)
from rayfleet.jobs.driver import run_driver
from rayfleet.jobs.events import BulkProgress, BulkResult, BulkStart, Phase, emit
from rayfleet.jobs.metrics import BulkMetrics

__all__ = ["main", "run"]

_PROGRESS_EVERY_S = 0.5
_RATE_WINDOW_S = 10.0
_BAD_SHOWN = 50
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _check_paths(job: BulkJob, layout: Layout) -> None:
    src = Path(job.input)
    if not src.is_file():
        raise BulkError(f"Input file {src} does not exist where the job runs." if not src.exists()
                        else f"Input {src} is not a file.",
                        hint="On a fleet, put the input under the fleet's storage.path (seen by every node).")
    if not os.access(src, os.R_OK):
        raise BulkError(f"Input file {src} is not readable.")
    out_dir = layout.output.parent
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK):
        raise BulkError(f"Can't write into the output directory {out_dir}.",
                        hint="Pick an output path in an existing, writable directory.")


def _take_lock(layout: Layout, job_id: str) -> Any:
    """An exclusive flock on OUT.parts/lock for this process's life; refused when another run holds it."""
    f = open(layout.lock, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another run"
        f.close()
        raise BulkError(f"{layout.output} is being written by job {holder} right now.",
                        hint=f"Wait for it (rayfleet jobs logs {holder} --follow) or stop it "
                             f"(rayfleet jobs stop {holder}), then run this again to resume.") from None
    f.seek(0)
    f.truncate()
    f.write(job_id)
    f.flush()
    return f


def _prepare(job: BulkJob, layout: Layout) -> tuple[Any, Scan, Manifest]:
    """Lock, clean up, scan, and check/record the manifest."""
    _check_paths(job, layout)
    if not job.restart and layout.output.exists() and not layout.manifest.exists():
        raise BulkError(f"Output {layout.output} exists already.",
                        hint="Pass --restart to translate again and overwrite it, or choose another output.")
    try:
        layout.work_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise BulkError(f"Can't create the work directory {layout.work_dir}: {e.strerror}.") from e
    lock = _take_lock(layout, job.job_id)
    if job.restart:
        for p in layout.work_dir.iterdir():
            if p != layout.lock:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        layout.output.unlink(missing_ok=True)
        layout.errors.unlink(missing_ok=True)
    layout.remove_temporaries()
    emit(Phase(name="scanning the input"))
    scan = scan_input(job.input, part_size=job.part_size, batch_size=job.batch_size)
    if scan.lines == 0:
        raise BulkError(f"Input file {job.input} is empty.")
    manifest = Manifest.for_job(job, scan)
    old = Manifest.read(layout.manifest)
    if old is not None:
        diffs = old.differences(manifest)
        if diffs:
            raise BulkError(f"{layout.work_dir} holds parts of an earlier run that differs from this one: "
                            + "; ".join(diffs) + ".",
                            hint="Run with the earlier options to resume it, or pass --restart to start over "
                                 "(the finished parts are discarded).")
        manifest = replace(old, job_id=job.job_id, history=[*old.history, job.job_id])
    manifest.write(layout.manifest)
    return lock, scan, manifest


def _actors(job: BulkJob, chunks: int) -> int:
    import ray

    if job.actors:
        return max(1, min(job.actors, chunks))
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // job.cpus_per_actor) if job.cpus_per_actor > 0 else chunks
    if job.gpus_per_actor > 0:
        n = min(n, int(res.get("GPU", 0) // job.gpus_per_actor))
    return max(1, min(n, chunks))


def _write_part(layout: Layout, part: int, rows: dict[int, tuple[str, str]]) -> None:
    """The bad lines first, then the output lines: the part file existing means the part is done."""
    ordered = sorted(rows.items())
    write_atomic(layout.part_bad(part), (json.dumps({"line": n, "error": e}, ensure_ascii=False)
                                         for n, (_, e) in ordered if e))
    write_atomic(layout.part(part), (o for _, (o, e) in ordered if not e))


def _translate(job: BulkJob, layout: Layout, scan: Scan, parts: list[int], lines_before: int) -> int:
    """Translate the given parts with Ray Data; write each part when complete. Returns the actor count."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from rayfleet.bulk.udf import ChunkTranslator

    chunks = plan_chunks(scan, part_size=job.part_size, batch_size=job.batch_size, parts=parts)
    ray.init(log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    actors = _actors(job, len(chunks))
    prom = BulkMetrics(job.job_id)
    emit(Phase(name=f"translating with up to {actors} actor(s)", waits_for_resources=True))
    threads = max(1, int(job.cpus_per_actor))
    settings = {"model": job.model, "device": "cuda" if job.gpus_per_actor > 0 else "auto",
                "num_threads": threads, "max_new_tokens": job.max_new_tokens}
    items = [{k: v for k, v in asdict(c).items() if k != "index"} for c in chunks]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ChunkTranslator,
        batch_size=None,  # one block = one chunk per call: the progress bar moves chunk by chunk
        compute=ActorPoolStrategy(min_size=1, max_size=actors),
        fn_constructor_kwargs={"input_path": job.input, "field": job.field, "output_field": job.output_field,
                               "backend": job.backend, "settings": settings, "batch_size": job.batch_size},
        num_cpus=job.cpus_per_actor,
        num_gpus=job.gpus_per_actor or None,
    )
    expected = {p: part_lines(scan, job.part_size, p) for p in parts}
    pending: dict[int, dict[int, tuple[str, str]]] = {}
    done_lines = 0
    written = 0
    last = time.monotonic()
    # (time, lines done): the rate over the last few seconds; from the start until there are more samples
    # (one sample alone gave "128/300 lines, 0 lines/s")
    window: deque[tuple[float, int]] = deque([(last, 0)])
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            cols = [batch.column(c).to_pylist() for c in ("part", "line", "output", "error")]
            touched = set()
            for p, n, o, e in zip(*cols):
                pending.setdefault(p, {})[n] = (o, e)  # keyed by line: a retried chunk can't duplicate
                touched.add(p)
            for p in touched:
                if len(pending[p]) == expected[p]:
                    _write_part(layout, p, pending.pop(p))
                    written += 1
            done_lines += batch.num_rows
            now = time.monotonic()
            window.append((now, done_lines))
            while len(window) > 2 and now - window[0][0] > _RATE_WINDOW_S:
                window.popleft()
            if now - last >= _PROGRESS_EVERY_S:
                last = now
                _progress(prom, lines_before + done_lines, scan.lines, _rate(window), written)
    except Exception as e:  # Ray wraps UDF and actor failures: name the error underneath
        raise BulkError(f"Translation failed after {written} of {len(parts)} part(s): {_root_cause(e)}",
                        hint=f"See the full log with: rayfleet jobs logs {job.job_id}. The finished parts "
                             "are kept: run the same command again to resume.") from e
    if pending:
        missing = {p: expected[p] - len(rows) for p, rows in pending.items()}
        raise BulkError(f"Ray Data returned too few lines for parts {sorted(missing)}; they were not written.",
                        hint="Run the same command again to translate them.")
    _progress(prom, lines_before + done_lines, scan.lines, _rate(window), written)
    return actors


def _progress(prom: BulkMetrics, done: int, lines: int, rate: float, written: int) -> None:
    """The progress event (the follower's line) and the job's Prometheus gauges."""
    emit(BulkProgress(lines_done=done, lines=lines, lines_per_s=rate, parts_written=written))
    prom.progress(done, lines, rate)


def _rate(window: deque[tuple[float, int]]) -> float:
    """Lines per second between the oldest and newest sample (0 until there are two)."""
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return 0.0
    return round((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]), 1)


def _root_cause(e: BaseException) -> str:
    """'Type: message' of the innermost error under Ray's wrappers (RayTaskError, UserCodeException)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    lines = [ln for ln in _ANSI.sub("", str(e)).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _bad_lines(layout: Layout, n_parts: int) -> int:
    count = 0
    for i in range(n_parts):
        with open(layout.part_bad(i), "rb") as f:
            count += sum(1 for line in f if line.strip())
    return count


def run(job: BulkJob) -> BulkResult:
    """Translate job.input into job.output (resuming); return the ``result`` event."""
    layout = Layout(Path(job.output))
    t0 = time.monotonic()
    lock, scan, _ = _prepare(job, layout)
    try:
        n = num_parts(scan, job.part_size)
        done = layout.done_parts(n)
        todo = [p for p in range(n) if p not in done]
        lines_before = sum(part_lines(scan, job.part_size, p) for p in done)
        emit(BulkStart(lines=scan.lines, parts=n, parts_done=len(done), lines_done=lines_before,
                       part_size=job.part_size))
        actors = _translate(job, layout, scan, todo, lines_before) if todo else 0
        if _bad_lines(layout, n) == scan.lines:
            first = layout.part_bad(0).read_text().splitlines()[:1]
            why = json.loads(first[0])["error"] if first else "?"
            shutil.rmtree(layout.work_dir, ignore_errors=True)
            raise BulkError(f"No line of {job.input} could be translated: all {scan.lines} lines are bad "
                            f"(line 1: {why}).",
                            hint=f'Each line must be a JSON object with a non-empty string field "{job.field}"; '
                                 "name another field with --field.")
        emit(Phase(name="writing the output"))
        count, bad = assemble(layout, n)
    finally:
        lock.close()
    seconds = time.monotonic() - t0
    translated_now = scan.lines - lines_before
    return BulkResult(output=str(layout.output), errors_file=str(layout.errors) if bad else None,
                      lines=scan.lines, translated=count, bad=len(bad), bad_lines=bad[:_BAD_SHOWN], parts=n,
                      parts_skipped=len(done), parts_translated=len(todo), actors=actors, seconds=round(seconds, 1),
                      lines_per_s=round(translated_now / seconds, 1) if seconds > 0 else None)


def main(argv: list[str] | None = None) -> int:
    return run_driver(argv, "python -m rayfleet.bulk.workload JOB_JSON", BulkJob.from_json, run,
                      lambda job: job.job_id)


if __name__ == "__main__":
    sys.exit(main())
