"""The README's main command, end to end in a subprocess: ./run, the printed curl line, the README's
"Your own code on the cluster" block beside ./run's translator, other models, ./run stop; and bare
./run (the default hub model) where the Hugging Face Hub can't be reached. Cost: ~4 min on 2 cores."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import E2E_PORTS, ROOT, up_flags
from rayfleet.cluster import local
from rayfleet.config.service import ServiceSpec
from rayfleet.errors import ClusterNotRunning
from rayfleet.testing.tiny_model import greedy_translations

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


def readme_own_code_beside_the_translator(env: dict) -> None:
    """README's "Your own code on the cluster", as written, with ./run's translator holding one of
    the 2 CPUs and stdout a pipe: submit examples/own-code (Ray Train, DDP), serve examples/own-app,
    curl it, list services, delete it, examples/api.py. The test only adds its own ports."""
    commands = readme_own_code()
    assert [c[:2] for c in commands] == [["rayfleet", "submit"], ["rayfleet", "serve"], ["curl", "-X"],
                                         ["rayfleet", "services"], ["rayfleet", "services"],
                                         ["python", "examples/api.py"]]
    submit, serve, curl, services, delete, api = commands
    serve_port = E2E_PORTS["serve"]
    curl = [a.replace("127.0.0.1:8000", f"127.0.0.1:{serve_port}") for a in curl]
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
    # a pipe, no COLUMNS: the table is as wide as its cells, no URL cut at 80 columns
    assert f"http://127.0.0.1:{serve_port}/sentiment " in r.stdout, r.stdout

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


def _run(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "run"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def test_run_serves_then_stop_leaves_nothing(tiny_model, short_model, tmp_path):
    env = dict(os.environ, RAYFLEET_HOME=str(tmp_path / "home"))
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
        # ./run deploys the default service spec with --model: its max_new_tokens.
        body = json.loads(shlex.split(curl)[-1])
        expected = greedy_translations(tiny_model, [body["text"]],
                                       max_new_tokens=ServiceSpec().generation.max_new_tokens)[body["text"]]
        assert expected.strip()
        assert json.loads(answer.stdout) == {"translation": expected}, answer.stdout

        readme_own_code_beside_the_translator(env)

        # Again while up: harmless, same cluster, still serving.
        r2 = _run("--model", str(tiny_model), *up_flags(E2E_PORTS), env=env)
        assert r2.returncode == 0, r2.stdout + r2.stderr
        assert "Cluster already running." in r2.stdout
        assert local.current(Path(env["RAYFLEET_HOME"])).cluster_id == cluster.cluster_id

        # Another model shape (24 positions, max_length 20, never emits </s>): its first curl answers.
        r4 = _run("--model", str(short_model), *up_flags(E2E_PORTS), env=env)
        assert r4.returncode == 0, r4.stdout + r4.stderr
        assert f"Service translator is up: 1 replica(s), model {short_model}" in r4.stdout
        curl = re.search(r"^  try:\s+(curl .*)$", r4.stdout, re.M).group(1)
        answer = subprocess.run(["bash", "-c", curl + " -s -w '\\n%{http_code}'"], capture_output=True, text=True,
                                timeout=60)
        body, status = answer.stdout.rsplit("\n", 1)
        assert status == "200" and json.loads(body)["translation"].strip(), answer.stdout

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


def test_bare_run_without_the_hub_is_one_clear_error_within_seconds(tmp_path):
    """What a new user without network access gets from plain ``./run``: the cluster starts, then
    one error line naming the default model and why, a hint, exit 1, within seconds, no traceback.

    Offline mode is off (conftest sets HF_HUB_OFFLINE for every other test) and the Hugging Face
    cache is empty. The hub endpoint is a loopback port that refuses connections, so the test
    contacts nothing off this machine and the reason in the message is always the same (against
    huggingface.co with no network it reads "huggingface.co: Name or service not known")."""
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        hub = f"127.0.0.1:{closed.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items()
               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_ENDPOINT")}
        env.update(RAYFLEET_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"),
                   HF_ENDPOINT=f"http://{hub}")
        t0 = time.monotonic()
        r = _run(*up_flags(E2E_PORTS), env=env, timeout=300)
        took = time.monotonic() - t0
    print(f"bare ./run took {took:.1f} s (cluster start included)")
    home = Path(env["RAYFLEET_HOME"])
    try:
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Cluster started." in r.stdout
        assert r.stderr.splitlines() == [
            "error: Model 'Helsinki-NLP/opus-mt-en-fr' is not in the local cache and the Hugging Face Hub "
            "can't be reached (127.0.0.1: Connection refused).",
            "hint: Pass a local directory that holds a model saved with save_pretrained (config.json, tokenizer "
            "files, weights), e.g. --model /models/opus-mt-en-fr or 'model: /models/opus-mt-en-fr' in service.yaml.",
        ]
        assert took < 60, f"bare ./run took {took:.0f} s"
    finally:
        try:
            pids = local.pids(local.current(home))
        except ClusterNotRunning:
            pids = []
        stop = _run("stop", env=env, timeout=300)
    assert pids, "./run did not start the cluster"
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "no Ray process of it is left" in stop.stdout
    assert [p for p in pids if Path(f"/proc/{p}").exists() and local.processes.is_running(p)] == []
