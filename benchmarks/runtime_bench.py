"""The runtime install: uv (what rayfleet uses) vs pip, from the same wheelhouse, side by side.

    .venv/bin/python benchmarks/runtime_bench.py [--rounds 2] [--python python3]

Builds (or reuses) this machine's runtime wheelhouse exactly as ``rayfleet install`` does
(``cluster/runtime.py``: the lock of this environment, ``pip wheel`` into
``$RAYFLEET_HOME/wheelhouse/<lock hash>/``), then, in interleaved rounds, installs it into a
fresh venv of ``--python`` with no index:

1. ``uv venv`` + ``uv pip install`` (rayfleet's command line; a cold uv cache each round),
2. the same with ``--compile-bytecode`` (what pip does by default),
3. ``python -m venv`` + ``pip install --no-index --find-links``.

Prints seconds per round and the ratios. Nothing leaves this machine; every venv and cache
is removed at the end.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rayfleet.cluster.runtime import local_lock, wheelhouse


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _timed(cmds: list[list[str]], env: dict | None = None) -> float:
    t0 = time.monotonic()
    for c in cmds:
        subprocess.run(c, check=True, capture_output=True, env=env)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--python", default=shutil.which("python3") or sys.executable,
                    help="the nodes' python3 (default: this machine's python3)")
    args = ap.parse_args()
    lock = local_lock()
    wh = wheelhouse(lock, print)
    uv = str(wh / "uv")
    reqs = str(wh / "requirements.txt")
    size = sum(f.stat().st_size for f in wh.iterdir()) / 2**20
    print(f"CPU: {_cpu()} ({len(__import__('os').sched_getaffinity(0))} usable); lock {lock.digest}: "
          f"{len(lock.pins)} packages, {size:.0f} MB of wheels; python {args.python}")
    times: dict[str, list[float]] = {"uv": [], "uv --compile-bytecode": [], "pip": []}
    for r in range(args.rounds):
        for name in times:
            work = Path(tempfile.mkdtemp(prefix="rf-rtbench-"))
            venv, cache = work / "venv", work / "cache"
            env = {"PATH": "/usr/bin:/bin", "UV_CACHE_DIR": str(cache), "UV_NO_CONFIG": "1",
                   "UV_PYTHON_DOWNLOADS": "never", "HOME": str(work)}
            try:
                if name == "pip":
                    cmds = [[args.python, "-m", "venv", str(venv)],
                            [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wh),
                             "-r", reqs]]
                else:
                    extra = ["--compile-bytecode"] if "compile" in name else []
                    cmds = [[uv, "venv", "-q", "--python", args.python, str(venv)],
                            [uv, "pip", "install", "-q", *extra, "--python", str(venv / "bin" / "python"),
                             "--no-index", "--find-links", str(wh), "-r", reqs]]
                t = _timed(cmds, env)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            times[name].append(t)
            print(f"round {r + 1}: {name:22s} {t:6.1f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    print("\nbest of rounds:")
    for k, v in best.items():
        print(f"  {k:22s} {v:6.1f} s   pip / this = {best['pip'] / v:4.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
