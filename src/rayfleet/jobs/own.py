"""Any program as a Ray Job: ``rayfleet submit`` and ``Cluster.submit``.

``prepare`` checks everything that can be checked on this machine (the working
directory, its packaged size, the requirements file, ``K=V`` variables, resources)
and builds the Ray Job's runtime_env; nothing reaches the cluster until it passes.
``submit`` refuses a job the cluster could never place, then submits it with the
metadata ``rayfleet.kind: submit`` (so ``rayfleet jobs`` lists it). ``follow``
streams the job's log and returns how it ended, with the exit code the CLI uses.

The working directory is packaged by Ray (its ``.gitignore``/``.rayignore`` rules and
default excludes: ``.git``, ``.venv``, ``venv``, ``__pycache__``); ``check_package``
uses Ray's own traversal to measure it against the most the Jobs API accepts.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rayfleet.errors import ConfigError, JobError, exception_line
from rayfleet.jobs.resources import Demand, check_fits
from rayfleet.jobs.submit import JobInfo, JobsClient

__all__ = ["Submission", "JobEnd", "prepare", "submit", "follow", "demand", "parse_env", "read_requirements",
           "check_package", "package_limit", "write_package", "failure_summary", "failure_hint", "KIND"]

KIND = "submit"
# Ray's packaging warns about every file over 10 MiB; check_package says what matters once.
_QUIET = logging.getLogger("rayfleet.package")
_QUIET.setLevel(logging.ERROR)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LARGEST_SHOWN = 5
_WHEELS_HINT = ("Nodes without internet access install from wheels: put the wheel files in a directory every "
                "node sees (the fleet's storage.path) and start the requirements file with "
                "'--no-index' and '--find-links /that/directory'.")


@dataclass(frozen=True)
class Submission:
    """A checked job, ready to submit."""

    entrypoint: str
    name: str
    runtime_env: dict[str, Any]
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    working_dir: Path | None = None
    package_bytes: int = 0


@dataclass(frozen=True)
class JobEnd:
    """How a followed job ended: its info, the exit code a command returns, its last log lines."""

    info: JobInfo
    tail: list[str]

    @property
    def exit_code(self) -> int:
        return 0 if self.info.status == "SUCCEEDED" else 1

    @property
    def succeeded(self) -> bool:
        return self.info.status == "SUCCEEDED"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def parse_env(items: Sequence[str] | dict[str, str] | None) -> dict[str, str]:
    """``["K=V", ...]`` (or a dict) -> ``{K: V}``; ConfigError naming the bad item."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else []
    if not isinstance(items, dict):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--env {item!r}: expected NAME=VALUE.", hint="e.g. --env EPOCHS=3")
            pairs.append((key, value))
    out = {}
    for key, value in pairs:
        if not _ENV_NAME.match(key):
            raise ConfigError(f"--env {key}={value}: {key!r} is not a variable name.",
                              hint="Use letters, digits and '_', not starting with a digit, e.g. --env EPOCHS=3")
        out[key] = str(value)
    return out


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines left out)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such requirements file.",
                          hint="Pass a pip requirements file, e.g. --requirements requirements.txt") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: can't read the requirements file: {e}.") from None
    lines = [ln.split(" #")[0].strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def package_limit() -> int:
    """The largest working-dir package Ray accepts through the Jobs API, in bytes."""
    from rayfleet._compat.ray import package_limit as limit

    return limit()


def write_package(path: Path, dest: Path, *, include_parent_dir: bool = False) -> None:
    """Zip ``path`` into ``dest`` exactly as Ray packages a working dir."""
    from rayfleet._compat.ray import create_package

    create_package(path, dest, include_parent_dir=include_parent_dir, logger=_QUIET)


def _package_files(path: Path) -> list[tuple[int, Path]]:
    """(size, file) of every file Ray would package from ``path``, by Ray's own traversal."""
    from rayfleet._compat.ray import walk_package

    files: list[tuple[int, Path]] = []

    def handler(p: Path) -> None:
        if p.is_file():
            files.append((p.stat().st_size, p))

    walk_package(path, handler)
    return files


def check_package(path: Path) -> int:
    """The size of ``path`` as Ray packages it; JobError naming the largest files when it is over
    ``package_limit()``. Zipped only when the files together are over the limit."""
    limit = package_limit()
    files = _package_files(path)
    size = sum(s for s, _ in files)
    if size >= limit:
        with tempfile.TemporaryDirectory(prefix="rayfleet-pkg-") as tmp:
            zipped = Path(tmp) / "package.zip"
            write_package(path, zipped)
            size = zipped.stat().st_size
    if size < limit:
        return size
    largest = sorted(files, key=lambda f: -f[0])[:_LARGEST_SHOWN]
    raise JobError(
        f"{path}: the working directory is {_mib(size)} zipped; Ray takes at most {_mib(limit)}. Nothing was "
        "submitted.",
        context="largest files:\n" + "\n".join(f"  {_mib(s):>10}  {p.relative_to(path)}" for s, p in largest),
        hint="Leave them out with a .rayignore file (gitignore syntax) in the working directory, or read large "
             "data from storage every node sees instead of uploading it.")


def _default_name(entrypoint: str) -> str:
    words = shlex.split(entrypoint)
    script = next((w for w in words[1:] if not w.startswith("-")), words[0] if words else "job")
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(script).stem.lower()).strip("-")
    return stem[:40] or "job"


def prepare(entrypoint: str | Sequence[str], *, working_dir: str | Path | None = None,
            requirements: str | Path | None = None, env: Sequence[str] | dict[str, str] | None = None,
            num_cpus: float = 0.0, num_gpus: float = 0.0, resources: dict[str, float] | str | None = None,
            name: str | None = None) -> Submission:
    """Check a job and build its runtime_env; ConfigError/JobError before anything is submitted.

    ``entrypoint`` is a shell command line, or its words (quoted for the shell here).
    """
    if not isinstance(entrypoint, str):
        entrypoint = shlex.join(list(entrypoint))
    if not entrypoint.strip():
        raise ConfigError("No command to run.", hint="e.g. rayfleet submit -- python train.py --epochs 3")
    variables = parse_env(env)
    if isinstance(resources, str):
        try:
            resources = json.loads(resources)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--resources {resources!r}: not JSON ({e.msg}).",
                              hint='e.g. --resources \'{"accelerator": 1}\'') from None
    resources = resources or {}
    if not isinstance(resources, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in resources.items()):
        raise ConfigError(f"--resources {json.dumps(resources)}: expected an object of names to amounts >= 0.",
                          hint='e.g. --resources \'{"accelerator": 1}\'')
    if {"CPU", "GPU"} & set(resources):
        raise ConfigError("--resources: give CPUs and GPUs with --num-cpus and --num-gpus.")
    for what, value in (("--num-cpus", num_cpus), ("--num-gpus", num_gpus)):
        if value < 0:
            raise ConfigError(f"{what} {value:g}: must be 0 or more.")
    runtime_env: dict[str, Any] = {"env_vars": {"PYTHONUNBUFFERED": "1", **variables}}
    wd, size = None, 0
    if working_dir is not None:
        wd = Path(working_dir).expanduser().resolve()
        if not wd.exists():
            raise ConfigError(f"--working-dir {working_dir}: no such directory.",
                              hint="Pass the directory that holds your code, e.g. --working-dir .")
        if not wd.is_dir():
            raise ConfigError(f"--working-dir {working_dir}: not a directory.")
        size = check_package(wd)
        runtime_env["working_dir"] = str(wd)
    if requirements is not None:
        packages = read_requirements(requirements)
        if packages:
            runtime_env["pip"] = {"packages": packages, "pip_check": False}
    job_name = name or _default_name(entrypoint)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", job_name):
        raise ConfigError(f"--name {job_name!r}: use letters, digits, '.', '_' and '-' (at most 63).")
    return Submission(entrypoint=entrypoint, name=job_name, runtime_env=runtime_env, num_cpus=float(num_cpus),
                      num_gpus=float(num_gpus), resources=dict(resources), working_dir=wd, package_bytes=size)


def demand(sub: Submission) -> Demand:
    """What the job's entrypoint reserves (its own tasks and actors ask for theirs when they start)."""
    return Demand(f"job {sub.name}", 1, sub.num_cpus, sub.num_gpus)


def submit(client: JobsClient, sub: Submission) -> str:
    """Submit ``sub``; JobError before submitting when the cluster could never place its entrypoint."""
    if sub.num_cpus or sub.num_gpus:
        check_fits(demand(sub), client.usage(), fix="a smaller --num-cpus/--num-gpus")
    job_id = f"{sub.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    try:
        return client.submit(sub.entrypoint, submission_id=job_id, runtime_env=sub.runtime_env,
                             metadata={"rayfleet.kind": KIND, "rayfleet.name": sub.name},
                             entrypoint_num_cpus=sub.num_cpus, entrypoint_num_gpus=sub.num_gpus,
                             entrypoint_resources=sub.resources or None)
    except JobError as e:
        if "pip" in sub.runtime_env and "pip" in str(e).lower():
            raise JobError(e.message, hint=_WHEELS_HINT) from None
        raise


def follow(client: JobsClient, job_id: str, *, on_line: Callable[[str], None] | None = None,
           on_poll: Callable[[], None] | None = None, poll_s: float = 0.5) -> JobEnd:
    """Stream the job's log to ``on_line`` until it ends; return how it ended."""
    tail: list[str] = []
    for line in client.follow(job_id, poll_s=poll_s, on_poll=on_poll):
        tail = (tail + [line])[-20:]
        if on_line is not None:
            on_line(line)
    return JobEnd(client.final_info(job_id), tail)


_EXIT_CODE = re.compile(r"exit code (-?\d+)")


def failure_summary(end: JobEnd) -> str:
    """``FAILED (exit code 1): ValueError: bad input``: how the job ended and, when its log ends with a
    traceback, the exception line; or why its environment could not be set up (pip's own errors)."""
    msg = (end.info.message or "").strip()
    if msg.startswith("runtime_env setup failed"):
        errors = [ln.strip() for ln in msg.splitlines() if ln.strip().startswith("ERROR:")]
        what = "its requirements could not be installed" if "pip" in msg else "its environment could not be set up"
        return f"{end.info.status}: {what}" + (": " + " ".join(errors) if errors else f" ({msg.splitlines()[0]})")
    code = _EXIT_CODE.search(msg.split(", last available logs")[0])
    out = end.info.status + (f" (exit code {code.group(1)})" if code else "")
    exc = exception_line(end.tail)
    if exc:
        return f"{out}: {exc}"
    first = msg.splitlines()[0].split(", last available logs")[0] if msg else ""
    return f"{out}: {first}" if first and not code else out


def failure_hint(info: JobInfo) -> str | None:
    """Why a job failed before its program ran (its requirements would not install), with the fix."""
    msg = info.message or ""
    if msg.startswith("runtime_env setup failed") and "pip" in msg:
        return _WHEELS_HINT
    return None
