"""The README's main command, end to end in a subprocess: ./run, the printed curl line, ./run stop."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import E2E_PORTS, ROOT, up_flags
from rayfleet.cluster import local

pytestmark = pytest.mark.e2e


def _run(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "run"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def test_run_serves_then_stop_leaves_nothing(tiny_model, tmp_path):
    env = dict(os.environ, RAYFLEET_HOME=str(tmp_path / "home"), COLUMNS="250")
    t0 = time.monotonic()
    r = _run("--model", str(tiny_model), "--num-cpus", "2", *up_flags(E2E_PORTS), env=env)
    print(f"./run took {time.monotonic() - t0:.0f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    serve_url = f"http://127.0.0.1:{E2E_PORTS['serve']}"
    assert f"translate: {serve_url}/translate" in r.stdout
    assert f"docs:      {serve_url}/docs" in r.stdout
    assert f"dashboard:  http://127.0.0.1:{E2E_PORTS['dashboard']}" in r.stdout
    cluster = local.current(Path(env["RAYFLEET_HOME"]))
    try:
        curl = re.search(r"^  try:\s+(curl .*)$", r.stdout, re.M).group(1)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        assert re.fullmatch(r'\{"translation":".+"\}', answer.stdout), answer.stdout

        # Again while up: harmless, same cluster, still serving.
        r2 = _run("--model", str(tiny_model), *up_flags(E2E_PORTS), env=env)
        assert r2.returncode == 0, r2.stdout + r2.stderr
        assert "Cluster already running." in r2.stdout
        assert local.current(Path(env["RAYFLEET_HOME"])).cluster_id == cluster.cluster_id

        # A model that can't be had: one clear error, exit 1, no traceback, nothing hangs.
        missing = tmp_path / "no-such-model"
        r3 = _run("--model", str(missing), *up_flags(E2E_PORTS), env=env, timeout=300)
        assert r3.returncode == 1
        assert f"error: Model directory '{missing}' does not exist." in r3.stderr
        assert "hint: Pass a local directory" in r3.stderr
        assert "Traceback" not in r3.stderr
    finally:
        pids = local.pids(cluster)
        assert pids
        t0 = time.monotonic()
        stop = _run("stop", env=env, timeout=300)
        print(f"./run stop took {time.monotonic() - t0:.0f} s")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "no Ray process of it is left" in stop.stdout
    assert [p for p in pids if Path(f"/proc/{p}").exists() and local.processes.is_running(p)] == []
