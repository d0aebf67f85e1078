"""README's "Quick start on a small machine", as written, on a 2-CPU local cluster, through
the CLI with stdout a pipe (not a terminal): up, serve + translate, train the tiny example
to exact match >= 0.9 beside the translator, translate-file with the trained model, down.
Then the README's tune (shortened; every trial's result printed, the best registered) beside
the translator, what a job that can't fit gets
(refused before submit), and what one that waits for busy CPUs prints (the waiting line,
then it starts once they are freed; Ctrl-C detaches; `jobs stop` stops it).

The commands come from the README's code block; the test only adds its own ports, a
tiny local model for the hub's, and its own output path. Cost: ~4 min on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import E2E_PORTS, ROOT, up_flags
from rayfleet.cluster import local
from rayfleet.errors import ClusterNotRunning
from rayfleet.train.corpus import generate_pairs

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[")


def readme_quick_start() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start on a small machine"):]
    block = section[section.index("```bash\n") + 8:section.index("```", section.index("```bash\n") + 8)]
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.split("#", 1)[0].strip()]


def _cli(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / args[0]
    t0 = time.monotonic()
    r = subprocess.run([str(exe), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    print(f"$ {shlex.join(args)}  -> {r.returncode} ({time.monotonic() - t0:.0f} s)\n{r.stdout}{r.stderr}")
    assert not ANSI.search(r.stdout + r.stderr), "terminal codes in output that is not a terminal"
    return r


def test_readme_quick_start_on_two_cpus(tiny_model, tmp_path):
    env = dict(os.environ, RAYFLEET_HOME=str(tmp_path / "home"))
    out = tmp_path / "out.jsonl"
    commands = readme_quick_start()
    assert [c[:2] for c in commands] == [["rayfleet", "up"], ["rayfleet", "serve"], ["rayfleet", "translate"],
                                         ["rayfleet", "train"], ["rayfleet", "translate-file"],
                                         ["rayfleet", "down"]]
    up, serve, translate, train, bulk, down = commands
    # This test's own ports (and 2 CPUs, what the README's 2-core machine has), model and output path.
    up = up + ["--num-cpus", "2", *up_flags(E2E_PORTS)]
    serve = [str(tiny_model) if a == "/models/opus-mt-en-fr" else a for a in serve]
    bulk = [str(out) if a == "out.jsonl" else a for a in bulk]
    home = Path(env["RAYFLEET_HOME"])
    try:
        r = _cli(up, env)
        assert r.returncode == 0 and "Cluster started." in r.stdout

        r = _cli(serve, env)
        assert r.returncode == 0, r.stderr
        assert f"Service translator is up: 1 replica(s), model {tiny_model}" in r.stdout

        r = _cli(translate, env)
        assert r.returncode == 0, r.stderr
        from rayfleet.serve.backends.base import BackendSettings, load_backend
        from rayfleet.serve.segment import TextTranslator

        expected = TextTranslator(load_backend("auto", BackendSettings(model=str(tiny_model)))).translate(
            [translate[2]])[0].text
        assert r.stdout == expected + "\n"

        t0 = time.monotonic()
        r = _cli(train, env, timeout=900)
        print(f"train took {time.monotonic() - t0:.0f} s")
        assert r.returncode == 0, r.stderr
        # (heartbeats, "still starting workers ...", come when a phase takes over 30 s: a loaded machine)
        lines = [ln for ln in r.stdout.splitlines() if not re.fullmatch(r"still [a-z ]+ \.\.\.", ln)]
        assert lines[0] == "num_workers auto: 1 worker(s) (1 of 2 CPUs free)"
        assert lines[2:5] == ["Preparing data and tokenizer ...", "Reading and tokenizing the data in the driver ...",
                              "Starting workers ..."]
        assert re.fullmatch(r"Training with 1 worker\(s\) on 1 node\(s\): [\d.]+", lines[5]), lines
        assert not any(line.startswith("waiting for resources") for line in lines)  # 1 CPU was free
        final = [float(m.group(1)) for line in lines if (m := re.match(r"step 500: exact_match ([\d.]+),", line))]
        assert final and final[0] >= 0.9, lines
        assert "Registered en-fr-tiny version 1 (alias staging): registry://en-fr-tiny/1" in lines

        r = _cli(bulk, env)
        assert r.returncode == 0, r.stderr
        assert "Scanning the input ..." in r.stdout
        assert re.search(r"^Translating with up to \d actor\(s\) \.\.\.$", r.stdout, re.M), r.stdout
        assert f"Translated 300 of 300 lines into {out}" in r.stdout
        expected = [fr for _, fr in generate_pairs(300, seed=7)]
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [g["id"] for g in got] == list(range(1, 301))
        exact = sum(g["translation"] == e for g, e in zip(got, expected)) / len(expected)
        print(f"translate-file with the trained model: exact match {exact:.3f}")
        assert exact >= 0.9

        # The README's tune, shortened (40 steps, 2 trials; chrF, in which trials this short already
        # differ), beside the translator: 1 worker per trial, one trial after the other on the one free
        # CPU (a finished trial must give its CPU back, or the second waits forever).
        short = tmp_path / "short.yaml"
        short.write_text((ROOT / "examples" / "finetune-tiny.yaml").read_text()
                         .replace("max_steps: 500", "max_steps: 40").replace("every_steps: 100", "every_steps: 20")
                         .replace("metric: exact_match", "metric: chrf"))
        r = _cli(["rayfleet", "tune", str(short), "--samples", "2"], env, timeout=900)
        assert r.returncode == 0, r.stderr
        # (translate-file's actors may still be going away: 0 or 1 CPU free; auto takes 1 either way)
        assert re.fullmatch(r"num_workers auto: 1 worker\(s\) \([01] of 2 CPUs free\)", r.stdout.splitlines()[0])
        assert "Running 2 trials ..." in r.stdout
        trials = re.findall(r"^trial \S+: (\{.*\}) -> (.*)$", r.stdout, re.M)
        assert len(trials) == 2, r.stdout
        chrf = [float(re.search(r"chrf ([0-9.]+)", metrics).group(1)) for _, metrics in trials]
        assert "Registered en-fr-tiny version 2 (alias staging)" in r.stdout
        r = _cli(["rayfleet", "models", "show", "en-fr-tiny", "2"], env)
        assert r.returncode == 0, r.stderr
        registered = dict(kv.rsplit(" ", 1) for kv in re.search(r"metrics:\s+(.*)", r.stdout).group(1).split(", "))
        assert float(registered["chrf"]) == pytest.approx(max(chrf), abs=0.1)  # the best trial's model
        assert float(registered["step"]) == 40
        assert (Path(re.search(r"files:\s+(\S+)", r.stdout).group(1)) / "config.json").is_file()

        # A job that could never fit: refused before anything is submitted.
        r = _cli(train + ["--num-workers", "3"], env)
        assert r.returncode == 1
        assert r.stderr.splitlines() == [
            "error: The training job en-fr-tiny (3 worker(s)) needs 3 CPUs (3 × 1) at once; the cluster has 2 "
            "CPUs, so it could never start.",
            "hint: Ask for less (--num-workers 2), or give the cluster more: 'rayfleet down --local && rayfleet up "
            "--local --num-cpus 3' on this machine, or add a node to the fleet.",
        ]

        # One that fits but waits: the translator holds 1 of the 2 CPUs it needs.
        exe = Path(sys.executable).parent / "rayfleet"
        # (SIGINT as in a terminal: a shell without job control starts its background jobs with it ignored)
        job = subprocess.Popen([str(exe), "train", str(short), "--num-workers", "2"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        seen: list[str] = []
        waiting = ("waiting for resources: needs 2 CPUs, free 1 of 2 CPUs "
                   "(held by: service translator (1 replica(s)))")
        deadline = time.monotonic() + 300
        for line in job.stdout:
            seen.append(line.rstrip("\n"))
            if seen[-1] == waiting:
                break
            assert time.monotonic() < deadline, seen
        else:
            pytest.fail(f"no waiting line: {seen}")
        r = _cli(["rayfleet", "services", "delete", "translator"], env)
        assert r.returncode == 0
        # It starts once the CPU is free. (How a run goes on to finish is what the first train showed.) Then
        # Ctrl-C detaches, as it says, and `rayfleet jobs stop` stops the job.
        for line in job.stdout:
            seen.append(line.rstrip("\n"))
            if re.fullmatch(r"Training with 2 worker\(s\) on 1 node\(s\): [\d.]+", seen[-1]):
                break
            assert time.monotonic() < deadline + 300, seen
        else:
            pytest.fail(f"the job did not start once the CPUs were free: {seen}")
        job.send_signal(signal.SIGINT)
        rest, _ = job.communicate(timeout=60)
        seen += rest.splitlines()
        print("\n".join(seen))
        assert job.returncode == 0, seen
        detached = re.search(r"^Detached; job (\S+) keeps running\.", "\n".join(seen), re.M)
        assert detached, seen
        run_id = detached[1]
        r = _cli(["rayfleet", "jobs", "stop", run_id], env)
        assert r.returncode == 0, r.stderr
        r = _cli(["rayfleet", "jobs"], env)
        assert re.search(rf"{re.escape(run_id)} .*STOPPED", r.stdout), r.stdout
    finally:
        try:
            pids = local.pids(local.current(home))
        except ClusterNotRunning:
            pids = []
        r = _cli(down, env, timeout=300)
    assert r.returncode == 0 and "no Ray process of it is left" in r.stdout
    assert pids and [p for p in pids if Path(f"/proc/{p}").exists() and local.processes.is_running(p)] == []
