"""``rayfleet translate-file``: 3000 lines through Ray Data on the session cluster, with the tiny model.

Real CLI, real Ray Job, real actor pool, no mocks. Checked: every good line comes
out once, in input order, with the translation the backend gives for it; bad
lines are skipped and reported with their line numbers; a run killed midway
(CLI killed, job stopped) resumes without redoing the finished parts and gives
the same lines as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import rayfleet_cli

pytestmark = pytest.mark.integration

LINES = 3000
PARTS = 12  # 3000 lines / --part-size 250 (the transformers run)
BAD = {
    5: ("not json {", "not valid JSON: Expecting value at column 1"),
    17: ("[1, 2]", "not a JSON object (got an array)"),
    100: ('{"id": 100}', 'no field "text"'),
    1201: ('{"id": 1201, "text": 42}', 'field "text" is not a string (got a number)'),
    2000: ('{"id": 2000, "text": "  "}', 'field "text" is empty'),
    2500: ("", "empty line"),
}
ARGS = ["--backend", "transformers", "--part-size", "250", "--batch-size", "64", "--max-new-tokens", "32"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3000 JSON lines {"id", "text"} from the synthetic corpus, with 6 bad lines injected."""
    from rayfleet.train.corpus import generate_pairs

    lines = [json.dumps({"id": i + 1, "text": en}) for i, (en, _) in enumerate(generate_pairs(LINES, seed=7))]
    for n, (raw, _) in BAD.items():
        lines[n - 1] = raw
    path = tmp_path_factory.mktemp("bulk") / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


_FULL_RUN: list[float] = []   # when the full run began and ended
# How much later than its driver recorded it a gauge can be in Prometheus: Ray's metrics agent exports every
# 10 s, Prometheus scrapes every 5 s (CI: a quick full run's every sample came after the run had ended)
_EXPORT_LAG_S = 15


@pytest.fixture(scope="module")
def full_run(local_cluster, tiny_model, corpus, prometheus):
    out = corpus.parent / "out.jsonl"
    t0 = time.monotonic()
    _FULL_RUN.append(time.time())
    r = rayfleet_cli("translate-file", str(corpus), str(out), "--model", str(tiny_model), *ARGS, "--quiet",
                     timeout=600)
    _FULL_RUN.append(time.time())
    print(f"\nfull run: {time.monotonic() - t0:.1f} s\n{r.stdout}{r.stderr}")
    assert r.returncode == 0, r.stdout + r.stderr
    return r, out


def _good_inputs(corpus: Path) -> list[dict]:
    return [json.loads(line) for n, line in enumerate(corpus.read_text().splitlines(), 1) if n not in BAD]


def test_every_good_line_once_in_order_and_bad_lines_reported(full_run, corpus):
    r, out = full_run
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == LINES - len(BAD)
    assert [{k: v for k, v in row.items() if k != "translation"} for row in rows] == _good_inputs(corpus)
    assert all(isinstance(row["translation"], str) and row["translation"] for row in rows)
    errors = [json.loads(line) for line in Path(f"{out}.errors").read_text().splitlines()]
    assert errors == [{"line": n, "error": why} for n, (_, why) in sorted(BAD.items())]
    assert f"Translated {LINES - len(BAD)} of {LINES} lines into {out} in " in r.stdout
    assert f"Parts: {PARTS} in all, {PARTS} translated, 0 skipped" in r.stdout
    assert f"6 bad line(s) skipped, not translated (all listed in {out}.errors):" in r.stdout
    for n, (_, why) in BAD.items():
        assert f"  line {n}: {why}\n" in r.stdout
    assert not Path(f"{out}.parts").exists()


def test_translations_equal_the_backend(full_run, tiny_model):
    """A sample, translated one text at a time in this process, gives the same words."""
    from rayfleet.serve.backends.base import BackendSettings, load_backend

    _, out = full_run
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sample = rows[::75] + rows[-3:]
    backend = load_backend("transformers", BackendSettings(model=str(tiny_model), device="cpu", max_new_tokens=32))
    got = [backend.translate([row["text"]])[0] for row in sample]
    assert [row["translation"] for row in sample] == got


def _start(args: list[str], log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "rayfleet"
    env = {**os.environ, "COLUMNS": "200"}
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(exe), *args], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _wait_for(cond, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_killed_midway_then_resumed(full_run, corpus, tiny_model, serve_target, tmp_path):
    """ctranslate2 this time, one actor, small parts: the CLI is killed after a first part, its job stopped."""
    from rayfleet.bulk.launch import submit
    from rayfleet.bulk.plan import BulkError, BulkJob
    from rayfleet.jobs.submit import JobsClient
    from rayfleet.serve.backends.base import BackendSettings, load_backend

    _, full_out = full_run
    out = tmp_path / "out.jsonl"
    parts_dir = Path(f"{out}.parts")
    opts = ["--model", str(tiny_model), "--backend", "ctranslate2", "--batch-size", "16", "--actors", "1",
            "--max-new-tokens", "32", "--quiet"]
    args = ["translate-file", str(corpus), str(out), "--part-size", "100", *opts]
    parts = LINES // 100
    client = JobsClient(serve_target.dashboard_url, dict(serve_target.headers))

    def done_parts() -> list[Path]:
        return sorted(p for p in parts_dir.glob("part-*.jsonl") if not p.name.endswith(".bad.jsonl"))

    proc = _start(args, tmp_path / "killed.log")
    try:
        _wait_for(done_parts, 180, "a first finished part", poll_s=0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI we started (its own session), and only it
        proc.wait(timeout=30)
    job_id = (parts_dir / "lock").read_text().strip()
    assert job_id.startswith("translate-in-"), job_id
    # The job outlives its CLI: no second job may write the same parts meanwhile.
    with pytest.raises(BulkError, match=f"is being written by job {job_id} right now"):
        submit(client, BulkJob(input=str(corpus), output=str(out), model=str(tiny_model), job_id="x"))
    assert client.stop(job_id)
    assert client.wait(job_id, timeout_s=60).status == "STOPPED"
    finished = done_parts()
    assert 1 <= len(finished) < parts, f"{len(finished)} of {parts} parts were done: the kill came too late"
    inodes = {p.name: p.stat().st_ino for p in finished}

    # Other options than the parts were made with: refused, nothing discarded.
    r = rayfleet_cli("translate-file", str(corpus), str(out), "--part-size", "250", *opts)
    assert r.returncode == 1
    assert f"error: {parts_dir} holds parts of an earlier run that differs from this one: part_size was 100 " \
           "(now 250)." in r.stderr, r.stderr
    assert {p.name: p.stat().st_ino for p in done_parts()} == inodes

    r = rayfleet_cli(*args)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    k = len(finished)
    assert f"Resuming: {k} of {parts} parts ({k * 100} of {LINES} lines) are done already and are skipped." \
        in r.stdout
    assert f"Parts: {parts} in all, {parts - k} translated, {k} skipped" in r.stdout
    assert not parts_dir.exists()
    # Every good line exactly once, in input order; the same bad lines as the uninterrupted run.
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k_: v for k_, v in row.items() if k_ != "translation"} for row in rows] == _good_inputs(corpus)
    assert Path(f"{out}.errors").read_bytes() == Path(f"{full_out}.errors").read_bytes()
    # ... each with the translation ctranslate2 gives it (its output does not depend on the batch).
    backend = load_backend("ctranslate2", BackendSettings(model=str(tiny_model), device="cpu", max_new_tokens=32))
    texts = [row["text"] for row in rows]
    expected = [t for i in range(0, len(texts), 64) for t in backend.translate(texts[i:i + 64])]
    assert [row["translation"] for row in rows] == expected


def test_user_errors(full_run, corpus, tiny_model, tmp_path):
    model = ["--model", str(tiny_model)]
    missing = tmp_path / "missing.jsonl"
    r = rayfleet_cli("translate-file", str(missing), str(tmp_path / "o.jsonl"), *model)
    assert (r.returncode, r.stderr) == (1, f"error: Input file {missing} does not exist.\n")

    r = rayfleet_cli("translate-file", str(corpus), str(tmp_path / "o.jsonl"), *model, "--field", "body")
    assert r.returncode == 1
    assert r.stderr == (f'error: None of the first 1000 lines of {corpus} has a non-empty string field "body"; '
                        "their fields are: id, text.\nhint: Name the field to translate with --field, "
                        "e.g. --field id.\n")

    not_json = tmp_path / "notjson.txt"
    not_json.write_text("hello\nworld\n")
    r = rayfleet_cli("translate-file", str(not_json), str(tmp_path / "o.jsonl"), *model)
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: None of the 2 lines of {not_json} is a JSON object "
                               "(line 1: not valid JSON: Expecting value at column 1).\n")

    r = rayfleet_cli("translate-file", str(corpus), str(tmp_path / "no" / "such" / "dir" / "o.jsonl"), *model)
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: Output directory {tmp_path}/no/such/dir does not exist.\n")

    _, out = full_run
    r = rayfleet_cli("translate-file", str(corpus), str(out), *model)
    assert (r.returncode, r.stderr) == (1, f"error: Output {out} exists already.\nhint: Pass --restart to "
                                           "translate again and overwrite it, or choose another output.\n")

    r = rayfleet_cli("translate-file", str(corpus), str(tmp_path / "o.jsonl"), *model, "--backend", "fast")
    assert r.returncode == 1
    assert r.stderr == "error: Got 'fast' for --backend; expected one of auto, transformers, ctranslate2.\n"

    r = rayfleet_cli("translate-file", str(corpus), str(tmp_path / "o.jsonl"), *model, "--max-new-tokens", "500")
    assert r.returncode == 1
    assert r.stderr.startswith("error: Got 500 for --max-new-tokens; the model ")
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.parts").exists()


def test_prometheus_saw_the_lines_and_every_bulk_panel_has_data(full_run, prometheus):
    """The bulk job's gauges (recorded by its driver) in the session's Prometheus, and every bulk panel of
    the rayfleet Grafana dashboard with data."""
    import requests

    from rayfleet.cluster import grafana
    from rayfleet.jobs.metrics import BULK

    d = grafana.rayfleet_dashboard()

    def series(expr: str) -> list[dict]:
        q = requests.get(f"{prometheus}/api/v1/query_range", timeout=30, params={
            "query": grafana.concrete(expr, d), "start": _FULL_RUN[0], "end": _FULL_RUN[1] + _EXPORT_LAG_S,
            "step": 2}).json()
        assert q["status"] == "success", (expr, q)
        return q["data"]["result"]

    deadline = time.monotonic() + 60   # the last export of Ray's agent, the next scrape
    while not (done := series(f'max({BULK["done"]})')):
        assert time.monotonic() < deadline, "no bulk lines in Prometheus"
        time.sleep(5)
    seen = [float(v) for _, v in done[0]["values"]]
    print(f"lines done as Prometheus saw them: {seen}")
    assert 0 < max(seen) <= LINES and seen == sorted(seen)
    assert float(series(f'max({BULK["total"]})')[0]["values"][-1][1]) == LINES
    for e in grafana.expressions(d):
        if "rayfleet_bulk_" in e:
            assert series(e), e
