"""README's "Your own code on the cluster", as written, after ./run on a 2-CPU machine (the
translator holds one CPU), with stdout a pipe: submit examples/own-code (Ray Train, DDP),
serve examples/own-app, curl it, list services, delete it, examples/api.py; then ./run stop.

The commands come from the README's code block; the test only adds its own ports (and a
tiny local model for ./run). Cost: ~2.5 min on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import E2E_PORTS, ROOT, up_flags

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[")


def readme_own_code() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own code on the cluster"):]
    start = section.index("```bash\n") + 8
    block = section[start:section.index("```", start)]
    return [shlex.split(line.split("  #", 1)[0]) for line in block.splitlines() if line.split("  #", 1)[0].strip()]


def _sh(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    if args[0] == "rayfleet":
        args = [str(Path(sys.executable).parent / "rayfleet"), *args[1:]]
    elif args[0] == "python":
        args = [sys.executable, *args[1:]]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
    print(f"$ {shlex.join(args)}  -> {r.returncode}\n{r.stdout}{r.stderr}")
    # rayfleet's output; (examples/api.py's stderr is Ray's own log, which colours the dashboard URL)
    assert not ANSI.search(r.stdout + ("" if args[1:2] == ["examples/api.py"] else r.stderr)), \
        "terminal codes in output that is not a terminal"
    return r


def test_readme_own_code_beside_the_translator(tiny_model, tmp_path):
    env = dict(os.environ, RAYFLEET_HOME=str(tmp_path / "home"), COLUMNS="250")
    commands = readme_own_code()
    assert [c[:2] for c in commands] == [["rayfleet", "submit"], ["rayfleet", "serve"], ["curl", "-X"],
                                         ["rayfleet", "services"], ["rayfleet", "services"],
                                         ["python", "examples/api.py"]]
    submit, serve, curl, services, delete, api = commands
    serve_port = E2E_PORTS["serve"]
    curl = [a.replace("127.0.0.1:8000", f"127.0.0.1:{serve_port}") for a in curl]
    r = subprocess.run([str(ROOT / "run"), "--model", str(tiny_model), "--num-cpus", "2", *up_flags(E2E_PORTS)],
                       env=env, capture_output=True, text=True, timeout=900, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        r = _sh(submit, env)
        assert r.returncode == 0, r.stderr
        assert re.search(r"^final validation loss: 0\.0\d+$", r.stdout, re.M)
        assert re.search(r"^Job train-\S+ succeeded\.$", r.stderr, re.M)

        r = _sh(serve, env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["Service sentiment is up: 1 replica(s), app app:build",
                                         f"  url:       http://127.0.0.1:{serve_port}/sentiment"]

        r = _sh(curl, env)
        assert r.returncode == 0 and json.loads(r.stdout) == {"label": "positive", "score": 0.9608, "version": "1"}

        r = _sh(services, env)
        assert re.search(r"│ sentiment\s+│ app\s+│ RUNNING\s+│ 1\s+│ app:build", r.stdout), r.stdout
        assert re.search(r"│ translator\s+│ translator\s+│ RUNNING\s+│ 1\s+│", r.stdout), r.stdout

        r = _sh(delete, env)
        assert r.returncode == 0 and r.stdout.strip() == "Deleted service sentiment."

        r = _sh(api, env, timeout=300)
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()
        assert not any(line.startswith("waiting for resources") for line in out), out   # 1 CPU was free
        assert any(re.fullmatch(r"job train-\S+: SUCCEEDED, final validation loss: 0\.0\d+", line) for line in out), out
        assert f"service translator (translator, RUNNING): http://127.0.0.1:{serve_port}" in out
        assert not any("sentiment" in line for line in out)
        assert any(line.startswith("  The cat sleeps. -> ") and len(line) > 21 for line in out), out
        assert re.fullmatch(r"a Ray task ran on [\d.]+", out[-1]), out
    finally:
        stop = subprocess.run([str(ROOT / "run"), "stop"], env=env, capture_output=True, text=True, timeout=300,
                              cwd=ROOT, stdin=subprocess.DEVNULL)
    assert stop.returncode == 0, stop.stdout + stop.stderr
