"""The client side of ``rayfleet translate-file``: check, submit, follow, stop.

``prepare`` catches on this machine what would fail on the cluster (a missing
input, an unwritable output directory, a field no line has, an unknown model,
a file outside a fleet's shared storage) and returns the ``BulkJob``;
``submit`` starts the Ray Job ``python -m rayfleet.bulk.workload``; ``follow``
turns the job's log into events (``rayfleet.jobs.events``) until it ends.

Where the files must be: the job's driver runs on the cluster's head node and
the translator actors on any node, and they read and write the paths as given.
On the local cluster that is this machine. On a fleet, the input and the output
must be under the fleet's ``storage.path`` (the directory every node mounts).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from rayfleet.bulk.plan import BulkError, BulkJob, Layout, check_line
from rayfleet.jobs.events import BulkEvent, BulkResult
from rayfleet.jobs.resources import Demand, check_fits
from rayfleet.jobs.submit import TERMINAL, JobsClient, follow_events

__all__ = ["prepare", "demand", "submit", "follow", "stop", "running_job", "KIND", "PEEK_LINES"]

KIND = "translate-file"
PEEK_LINES = 1000
DEFAULT_MAX_NEW_TOKENS = 256


def _absolute(p: Path) -> Path:
    return Path(os.path.abspath(p.expanduser()))


def _check_fleet_storage(storage: str | None, fleet_name: str, paths: list[Path]) -> None:
    if storage is None:
        raise BulkError(f"translate-file on fleet '{fleet_name}' needs shared storage, and the fleet has none.",
                        hint="Set 'storage: {path: /mnt/shared}' in fleet.yaml (a directory every node mounts), "
                             "and put the input and output under it.")
    root = Path(storage)
    for p in paths:
        if not p.is_relative_to(root):
            raise BulkError(f"{p} is not under the fleet's storage.path {root}; the job's driver and its "
                            "translator actors run on the fleet's nodes and see only that shared directory.",
                            hint=f"Copy the input to {root}/ and name the input and output there, "
                                 f"e.g. {root}/{p.name}.")


def _peek(path: Path, field: str) -> None:
    """Refuse a file whose first lines have no usable ``field`` at all (a wrong --field, or not JSON Lines)."""
    objects = 0
    keys: dict[str, None] = {}
    first_reason = None
    seen = 0
    with open(path, "rb") as f:
        for raw in f:
            if seen >= PEEK_LINES:
                break
            seen += 1
            _, _, reason = check_line(raw.rstrip(b"\n"), field)
            if reason is None:
                return
            first_reason = first_reason or f"line {seen}: {reason}"
            try:
                parsed = json.loads(raw)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                objects += 1
                keys.update(dict.fromkeys(parsed))
    if seen == 0:
        raise BulkError(f"Input file {path} is empty.")
    lines = f"the {seen} lines" if seen < PEEK_LINES else f"the first {seen} lines"
    if objects:
        names = ", ".join(list(keys)[:10]) or "none"
        raise BulkError(f'None of {lines} of {path} has a non-empty string field "{field}"; '
                        f"their fields are: {names}.",
                        hint="Name the field to translate with --field, e.g. --field "
                             f"{next(iter(keys), 'text')}.")
    raise BulkError(f"None of {lines} of {path} is a JSON object ({first_reason}).",
                    hint='translate-file reads JSON Lines: one object per line, e.g. {"text": "Hello"}.')


def _check_local(src: Path, dst: Path, field: str, restart: bool) -> None:
    if not src.exists():
        raise BulkError(f"Input file {src} does not exist.")
    if not src.is_file():
        raise BulkError(f"Input {src} is not a file.")
    if not os.access(src, os.R_OK):
        raise BulkError(f"Input file {src} is not readable.")
    if dst.is_dir():
        raise BulkError(f"Output {dst} is a directory.", hint="Name the output file, e.g. out.jsonl.")
    parent = dst.parent
    if not parent.is_dir():
        raise BulkError(f"Output directory {parent} does not exist.", hint=f"Create it: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BulkError(f"Can't write into the output directory {parent}.",
                        hint="Pick an output path in a directory you can write to.")
    layout = Layout(dst)
    if not restart and dst.exists() and not layout.manifest.exists():
        raise BulkError(f"Output {dst} exists already.",
                        hint="Pass --restart to translate again and overwrite it, or choose another output.")
    _peek(src, field)


def _max_positions(model: str) -> int | None:
    """The model's ``max_position_embeddings`` from its config.json (a directory, or the hub cache)."""
    config: str | Path | None = Path(model) / "config.json"
    if not Path(model).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        config = cached if isinstance(cached, str) else None
    try:
        value = json.loads(Path(config).read_text()).get("max_position_embeddings") if config else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _max_new_tokens(model: str, wanted: int | None) -> int:
    """``wanted``, or 256 capped at what the model's decoder can reach (generation beyond it crashes)."""
    limit = _max_positions(model)
    if wanted is None:
        return min(DEFAULT_MAX_NEW_TOKENS, limit or DEFAULT_MAX_NEW_TOKENS)
    if limit is not None and wanted > limit:
        raise BulkError(f"Got {wanted} for --max-new-tokens; the model {model} has {limit} decoder positions, "
                        f"so at most {limit} tokens can be generated.", hint=f"Pass --max-new-tokens {limit} or less.")
    return wanted


def _job_id(src: Path) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", src.stem.lower()).strip("-")[:24] or "file"
    return f"translate-{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def prepare(input_path: Path, output_path: Path, *, model: str, field: str = "text",
            output_field: str = "translation", backend: str = "auto", part_size: int = 1000,
            batch_size: int = 64, actors: int | None = None, cpus_per_actor: float = 1.0,
            gpus_per_actor: float = 0.0, max_new_tokens: int | None = None, restart: bool = False,
            fleet_storage: str | None = None, fleet_name: str | None = None) -> BulkJob:
    """Check paths, field and model here; return the job to submit. ``fleet_name`` set: a fleet."""
    from rayfleet.serve.backends.base import BACKEND_NAMES
    from rayfleet.serve.models import for_fleet, resolve_model

    if backend not in BACKEND_NAMES:
        raise BulkError(f"Got {backend!r} for --backend; expected one of {', '.join(BACKEND_NAMES)}.")
    src, dst = _absolute(input_path), _absolute(output_path)
    if not field:
        raise BulkError("--field is empty.", hint="Name the field that holds the text, e.g. --field text.")
    if not output_field:
        raise BulkError("--output-field is empty.", hint="e.g. --output-field translation.")
    layout = Layout(dst)
    if src in (dst, layout.errors) or src.parent == layout.work_dir:
        raise BulkError(f"The output {dst} would overwrite the input.", hint="Choose another output path.")
    if fleet_name is not None:
        _check_fleet_storage(fleet_storage, fleet_name, [src, dst])
    # On a fleet whose storage is not mounted here, the job checks the paths itself.
    if fleet_name is None or (fleet_storage and Path(fleet_storage).is_dir()):
        _check_local(src, dst, field, restart)
    resolved = resolve_model(model)
    max_new_tokens = _max_new_tokens(resolved, max_new_tokens)
    if fleet_name is not None and fleet_storage and Path(fleet_storage).is_dir():
        resolved = for_fleet(resolved, lambda: Path(fleet_storage))  # the actors run on the fleet's nodes
    return BulkJob(input=str(src), output=str(dst), model=resolved, field=field,
                   output_field=output_field, backend=backend, part_size=part_size, batch_size=batch_size,
                   actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                   max_new_tokens=max_new_tokens, restart=restart, job_id=_job_id(src))


def running_job(client: JobsClient, job: BulkJob) -> str | None:
    """The id of a job that is writing the same output right now (read from the work dir's lock), if any."""
    lock = Layout(Path(job.output)).lock
    try:
        holder = lock.read_text().strip()
    except OSError:
        return None
    if not holder:
        return None
    try:
        status = client.info(holder).status
    except Exception:  # noqa: BLE001 - an unknown or unreadable job is not running
        return None
    return holder if status not in TERMINAL else None


def demand(job: BulkJob) -> Demand:
    """What the job needs at least: one translator actor."""
    return Demand(f"translate-file job ({Path(job.input).name})", 1, job.cpus_per_actor, job.gpus_per_actor)


def submit(client: JobsClient, job: BulkJob) -> str:
    """Start the job; return its id. Refused while another job writes the same output, and when
    the cluster could never place one actor."""
    check_fits(demand(job), client.usage(),
               fix="a smaller --cpus-per-actor" + (" or --gpus-per-actor" if job.gpus_per_actor else ""))
    other = running_job(client, job)
    if other is not None:
        raise BulkError(f"{job.output} is being written by job {other} right now.",
                        hint=f"Wait for it (rayfleet jobs logs {other} --follow) or stop it "
                             f"(rayfleet jobs stop {other}), then run this again to resume.")
    entrypoint = f"python -m rayfleet.bulk.workload {shlex.quote(job.to_json())}"
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}}
    return client.submit(entrypoint, submission_id=job.job_id, runtime_env=runtime_env,
                         metadata={"rayfleet.kind": KIND, "rayfleet.name": Path(job.input).name})


def follow(client: JobsClient, job_id: str, *, on_event: Callable[[Any], None] | None = None,
           poll_s: float = 0.5, on_poll: Callable[[], None] | None = None,
           on_log: Callable[[str], None] | None = None) -> BulkResult:
    """Follow the job to its end (``events.BulkEvent``s to ``on_event``); return its result event, or
    raise BulkError with the job's error."""
    return follow_events(client, job_id, BulkEvent, on_event=on_event, poll_s=poll_s, on_poll=on_poll,
                         on_log=on_log).result_or_raise(
        BulkError, resume="Finished parts are kept: run the same command again to resume.")


def stop(client: JobsClient, job_id: str, *, timeout_s: float = 60) -> str:
    """Stop the job and wait until it has ended; return its final status."""
    if client.stop(job_id):
        return client.wait(job_id, timeout_s=timeout_s).status
    return client.info(job_id).status
