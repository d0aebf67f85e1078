"""``rayfleet submit`` and ``Cluster.submit`` on the session cluster: a real Ray Train script that
is not rayfleet's (examples/own-code), a failing script, bad input (nothing submitted), a
requirements file installed offline from a wheel, a job that waits for busy CPUs, Ctrl-C.

Output is a pipe (not a terminal) except in the Ctrl-C-on-a-terminal test (a pty).
Cost: ~3 min on 2 cores.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, rayfleet_cli
from rayfleet.testing.wheels import build_wheel

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def cluster(local_cluster):
    import rayfleet

    return rayfleet.connect()


def _job_id(stderr: str) -> str:
    m = re.search(r"^Submitted job (\S+) on the local cluster ", stderr, re.M)
    assert m, stderr
    return m.group(1)


def test_own_ray_train_script_with_two_ddp_workers(cluster):
    """examples/own-code/train.py (TorchTrainer, DDP, checkpoints) as the README runs it."""
    r = rayfleet_cli("submit", "--working-dir", "examples/own-code", "--", "python", "train.py", "--epochs", "2",
                     "--num-workers", "2", timeout=600)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    assert not ANSI.search(r.stdout + r.stderr)
    job_id = _job_id(r.stderr)
    assert r.stderr.splitlines()[-1] == f"Job {job_id} succeeded."
    assert len(set(re.findall(r"worker (\d)/2 on ", r.stdout))) == 2          # both DDP ranks ran
    assert re.search(r"epoch 2/2: validation loss [\d.]+", r.stdout)
    loss = float(re.search(r"^final validation loss: ([\d.]+)$", r.stdout, re.M).group(1))
    assert loss < 0.2                                                         # it learned (starts near 3)
    checkpoint = Path(re.search(r"^checkpoint: (\S+)$", r.stdout, re.M).group(1))
    storage = Path(os.environ["RAYFLEET_HOME"]) / "storage"                  # $RAYFLEET_STORAGE of the job
    assert checkpoint.is_relative_to(storage) and (checkpoint / "model.pt").is_file()
    job = next(j for j in cluster.jobs() if j.id == job_id)
    assert (job.kind, job.name, job.status) == ("submit", "train", "SUCCEEDED")
    listed = rayfleet_cli("jobs")
    assert re.search(rf"{re.escape(job_id)}\s+│\s+submit\s+│\s+train\s+│\s+SUCCEEDED", listed.stdout), listed.stdout


def test_failing_script_exits_1_with_the_exception(cluster, tmp_path):
    (tmp_path / "fail.py").write_text(
        "import os\n\n\ndef load_settings(path):\n    raise FileNotFoundError(f'settings file {path} is missing')\n\n\n"
        "print('starting', flush=True)\nload_settings(os.environ['SETTINGS'])\n")
    r = rayfleet_cli("submit", "--working-dir", str(tmp_path), "--env", "SETTINGS=x.yaml", "--", "python", "fail.py")
    assert r.returncode == 1
    job_id = _job_id(r.stderr)
    assert "starting" in r.stdout.splitlines()
    err = r.stderr.splitlines()
    assert f"error: job {job_id} FAILED (exit code 1): FileNotFoundError: settings file x.yaml is missing" in err
    assert err[-1] == f"hint: the whole log: rayfleet jobs logs {job_id}"
    assert "last lines of its log:" in err and "  FileNotFoundError: settings file x.yaml is missing" in err


def test_bad_input_is_refused_before_anything_is_submitted(cluster, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "train.py").write_text("print(1)\n")
    with open(big / "data.bin", "wb") as f:      # incompressible and over Ray's 100 MiB upload limit
        f.write(os.urandom(101 * 2**20))
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (["--working-dir", str(tmp_path / "nope")],
         [f"error: --working-dir {tmp_path / 'nope'}: no such directory.",
          "hint: Pass the directory that holds your code, e.g. --working-dir ."]),
        (["--working-dir", str(tmp_path / "file.txt")], [f"error: --working-dir {tmp_path / 'file.txt'}: not a directory."]),
        (["--env", "EPOCHS"], ["error: --env 'EPOCHS': expected NAME=VALUE.", "hint: e.g. --env EPOCHS=3"]),
        (["--env", "2X=1"], ["error: --env 2X=1: '2X' is not a variable name.",
                             "hint: Use letters, digits and '_', not starting with a digit, e.g. --env EPOCHS=3"]),
        (["--resources", "{ssd: 1}"], None),
        (["--requirements", str(tmp_path / "req.txt")], [f"error: {tmp_path / 'req.txt'}: no such requirements file.",
                                                         "hint: Pass a pip requirements file, e.g. --requirements "
                                                         "requirements.txt"]),
        (["--num-cpus", "99"], None),
        (["--working-dir", str(big)], None),
    ]
    before = len(cluster.jobs())
    for args, expected in cases:
        r = rayfleet_cli("submit", *args, "--", "python", "train.py")
        print(args, r.stderr)
        assert r.returncode == 1, args
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), r.stderr
        if expected is not None:
            assert r.stderr.splitlines() == expected
    r = rayfleet_cli("submit", "--working-dir", str(big), "--", "python", "train.py")
    assert re.match(rf"error: {re.escape(str(big))}: the working directory is 101\.\d MiB zipped; Ray takes at most "
                    r"100\.0 MiB\. Nothing was submitted\.", r.stderr), r.stderr
    assert "largest files:" in r.stderr and re.search(r"101\.0 MiB\s+data\.bin", r.stderr)
    assert "hint: Leave them out with a .rayignore file" in r.stderr
    (big / ".rayignore").write_text("*.bin\n")    # the fix the hint names: now it goes
    r = rayfleet_cli("submit", "--working-dir", str(big), "--", "python", "train.py")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "1", r.stderr
    r = rayfleet_cli("submit", "--num-cpus", "99", "--", "python", "train.py")
    assert r.stderr.startswith("error: The job train needs 99 CPUs (1 × 99) at once; the cluster has 5 CPUs")
    r = rayfleet_cli("submit", "--")
    assert r.stderr.splitlines()[0] == "error: No command to run."
    assert len(cluster.jobs()) == before + 1      # only the fixed one


def test_requirements_install_offline_from_a_wheel(cluster, tmp_path):
    """The README's recipe for nodes without internet: --no-index and --find-links in the requirements."""
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "rfdemo", "0.1", "GREETING = 'hello from a wheel'\n")
    code = tmp_path / "code"
    code.mkdir()
    (code / "use.py").write_text("import os, rfdemo\nprint(rfdemo.GREETING, os.environ['RUN'])\n")
    req = code / "requirements.txt"
    req.write_text(f"--no-index\n--find-links {wheels}\nrfdemo==0.1  # offline\n")
    job = cluster.submit(["python", "use.py"], working_dir=code, requirements=req, env={"RUN": "api"})
    lines: list[str] = []
    end = job.follow(on_line=lines.append)
    assert end.exit_code == 0, lines
    assert "hello from a wheel api" in lines
    assert "hello from a wheel api" in job.logs()


def _lines_until(p: subprocess.Popen, prefix: str, timeout: float = 120) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in p.stderr:
        seen.append(line.rstrip("\n"))
        if seen[-1].startswith(prefix):
            return seen
        assert time.monotonic() < deadline, seen
    pytest.fail(f"no line starting {prefix!r}: {seen}")


def test_jobs_that_wait_for_busy_cpus_say_so_then_run(cluster):
    """The entrypoint's own --num-cpus, and a program whose Ray task asks for 2 CPUs: both wait while
    a hog holds the CPUs, say so (with who holds them), and run once it is stopped."""
    free = cluster.jobs_client.usage().free("CPU")
    assert free >= 2
    hog = cluster.submit(["python", "-c", "import time; time.sleep(120)"], num_cpus=free - 1, name="hog")
    task = "import ray; ray.init(); print(ray.get(ray.remote(num_cpus=2)(lambda: 'task ran').remote()))"
    entry = _start(["submit", "--num-cpus", "2", "--", "python", "-c", "print('ran')"], stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    inner = _start(["submit", "--", "python", "-c", task], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   stdin=subprocess.DEVNULL, text=True)
    try:
        waiting_entry = _lines_until(entry, "waiting for resources")[-1]
        waiting_inner = _lines_until(inner, "waiting for resources")[-1]
    finally:
        hog.stop()
    assert re.fullmatch(rf"waiting for resources: needs 2 CPUs, free 1 of 5 CPUs \(held by: .*job {hog.id} "
                        r"\(submit\).*\)", waiting_entry), waiting_entry
    # (Ray's pending demands are the cluster's: the other job's entrypoint, also 2 CPUs, may be counted)
    assert re.fullmatch(rf"waiting for resources: Ray's tasks and actors wait for [12] × \(2 CPU\), free [01] of 5 "
                        rf"CPUs \(held by: .*job {hog.id} \(submit\).*\)", waiting_inner), waiting_inner
    out_entry, _ = entry.communicate(timeout=300)
    out_inner, _ = inner.communicate(timeout=300)
    assert entry.returncode == 0 and out_entry.splitlines()[-1] == "ran"
    assert inner.returncode == 0 and out_inner.splitlines()[-1] == "task ran"


def test_a_program_asking_for_more_than_any_node_has_is_stopped(cluster):
    task = "import ray; ray.init(); print('asking', flush=True); ray.get(ray.remote(num_cpus=64)(lambda: 1).remote())"
    r = rayfleet_cli("submit", "--unplaceable-timeout", "10", "--", "python", "-c", task, timeout=300)
    assert r.returncode == 1
    job_id = _job_id(r.stderr)
    assert r.stderr.splitlines()[-2:] == [
        "error: The job made no progress for 10 s and can't be placed: Ray waits for 1 × (64 CPU), more than the "
        "cluster's nodes have (1 node(s), the largest with 5 CPU).",
        "hint: It was stopped. Ask for less in the program (workers, CPUs, GPUs), or give the cluster more "
        "(rayfleet up --local --num-cpus N, or add a node)."]
    assert cluster.job(job_id).info().status == "STOPPED"


def _start(args: list[str], **kw) -> subprocess.Popen:
    """The CLI as a user's shell starts it: Ctrl-C (SIGINT) delivered, even when this test run was
    started in the background of a shell without job control, which ignores SIGINT for its children."""
    exe = Path(sys.executable).parent / "rayfleet"
    return subprocess.Popen([str(exe), *args], cwd=ROOT, env=dict(os.environ, COLUMNS="200"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


SLEEPER = ["submit", "--", "python", "-c", "import time; print('started', flush=True); time.sleep(120)"]


def test_ctrl_c_without_a_terminal_detaches(cluster):
    p = _start(SLEEPER, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    job_id = None
    try:
        for line in p.stdout:
            if line.strip() == "started":
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, err
        job_id = _job_id(err)
        assert f"Detached; job {job_id} keeps running." in err
        assert cluster.job(job_id).info().status == "RUNNING"
    finally:
        p.kill()
        if job_id is not None:
            cluster.job(job_id).stop()


def test_ctrl_c_on_a_terminal_asks_and_stops(cluster):
    main, sub = pty.openpty()
    p = _start(SLEEPER, stdin=sub, stdout=sub, stderr=sub)
    os.close(sub)
    out = b""

    def read_until(text: bytes, timeout: float = 120) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while text not in out:
            assert time.monotonic() < deadline, out
            try:
                out += os.read(main, 4096)
            except OSError:  # EIO: the CLI closed the terminal (it exited)
                pytest.fail(f"the CLI exited ({p.poll()}) before printing {text!r}: {out!r}")

    try:
        read_until(b"\nstarted\r\n")  # the job's own line (the job's id, made from its command, holds "started" too)
        p.send_signal(signal.SIGINT)
        read_until(b"[y/N]")
        os.write(main, b"y\n")
        assert p.wait(timeout=90) == 130
        read_until(b"STOPPED")
        job_id = re.search(rb"Submitted job (\S+) on the", out).group(1).decode()
        assert cluster.job(job_id).info().status == "STOPPED"
    finally:
        p.kill()
        os.close(main)
