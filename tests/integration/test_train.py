"""Train a tiny Marian from scratch with 2 DDP workers as a Ray Job, register it, serve it.

The run goes through the real CLI (``rayfleet train``), the real Ray Train / Ray
Data / MLflow stack and a real Serve deployment of ``registry://NAME/VERSION``;
the served model must translate held-out sentences word for word.

Half-way between two checkpoints one training worker is killed (by PID, read from
the job's ``start`` event): the run resumes from the last checkpoint, redoes at most
one checkpoint interval, and still reaches the target. One training run (300 steps, exact
match ~0.99) for both (~2 min on 2 cores).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ARTIFACTS, ROOT, rayfleet_cli

pytestmark = pytest.mark.integration

THRESHOLD = 0.9
MODEL_NAME = "en-fr-test"
CHECKPOINT_EVERY = 100
KILL_AT_STEP = 150  # half-way between two checkpoints


def write_spec(tmp: Path, *, name: str, model_name: str, max_steps: int = 500, extra: str = "",
               ingest: str = "auto") -> Path:
    """A job spec on corpus files in tmp (written there by the corpus generator)."""
    from rayfleet.train.corpus import write_corpus

    write_corpus(tmp / "data", seed=0, train_size=5000, validation_size=500)
    spec = tmp / "job.yaml"
    spec.write_text(f"""\
name: {name}
model:
  base: from_scratch
data:
  train: data/train.tsv
  validation: data/validation.tsv
  max_source_length: 32
  max_target_length: 32
  ingest: {ingest}
training:
  max_steps: {max_steps}
  batch_size: 32
  lr: 2.0e-3
  warmup_steps: 100
  seed: 0
scaling:
  num_workers: 2
  cpus_per_worker: 1
checkpoints:
  every_steps: 100
  keep: 2
failure:
  max_failures: 2
eval:
  every_steps: 100
register:
  model_name: {model_name}
  alias: staging
{extra}""")
    return spec


class _Killer:
    """Follows the job's events beside the CLI; kills a worker at ``KILL_AT_STEP``, then notes where
    the restarted worker group resumed from."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.killed: int | None = None
        self.last_before_kill = 0
        self.max_before_resume = 0
        self.resumed_from: int | None = None
        self.starts = 0
        self.top: subprocess.Popen | None = None   # `rayfleet top --once` started late in the run

    def __call__(self, ev) -> None:
        from rayfleet.jobs import events

        if isinstance(ev, events.TrainStart):
            self.starts += 1
            if self.killed is None:
                self.pids = ev.pids
            elif self.resumed_from is None:
                self.resumed_from = ev.resumed_from
        elif isinstance(ev, events.TrainProgress):
            if self.killed is None:
                self.last_before_kill = ev.step
                if ev.step >= KILL_AT_STEP:
                    self.killed = self.pids[-1]  # a non-zero rank: the rank-0 process reports
                    os.kill(self.killed, signal.SIGKILL)
            if self.resumed_from is None:
                self.max_before_resume = max(self.max_before_resume, ev.step)
            elif ev.step >= 250 and self.top is None:   # the resumed group's gauges exported a few times by now
                self.top = subprocess.Popen([str(Path(sys.executable).parent / "rayfleet"), "top", "--once",
                                             "--interval", "1"], env=dict(os.environ, COLUMNS="80"),
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def trained(local_cluster, prometheus, tmp_path_factory):
    """Run `rayfleet train` once, one worker killed mid-run, the session's Prometheus watching; yield
    (cli output, tmp dir, killer)."""
    from rayfleet.cluster import local
    from rayfleet.jobs import events
    from rayfleet.jobs.submit import JobsClient, follow_events

    tmp = tmp_path_factory.mktemp("train")
    # Ray Data's read, tokenize and split (what a large file gets; the README's small one is tokenized by the driver)
    spec = write_spec(tmp, name="tiny-test", model_name=MODEL_NAME, max_steps=300, ingest="ray_data")
    p = subprocess.Popen([str(Path(sys.executable).parent / "rayfleet"), "train", str(spec), "--quiet"], cwd=ROOT,
                         env=dict(os.environ, COLUMNS="200"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = []
        for line in p.stdout:
            first.append(line)
            if m := re.match(r"Submitted job (\S+) ", line):
                break
        else:
            pytest.fail(f"no job submitted: {''.join(first)}{p.stderr.read()}")
        killer = _Killer()
        killer.job = m.group(1)
        killer.started = time.time()
        client = JobsClient(local_cluster.dashboard_url, local.auth_headers(local_cluster))
        follow_events(client, m.group(1), events.TrainEvent, on_event=killer)
        rest, err = p.communicate(timeout=600)
    finally:
        p.kill()
    out = "".join(first) + rest
    print(out, err)
    assert p.returncode == 0, out + err
    return out, tmp, killer


def test_train_reaches_exact_match_and_registers(trained):
    out, _, killer = trained
    r = rayfleet_cli("jobs", "logs", killer.job)   # the spec's data.ingest: ray_data
    assert re.search(r"reading and tokenizing the data with Ray Data", r.stdout, re.I), r.stdout[-3000:]
    m = re.search(r"Evaluation: exact_match ([0-9.]+), bleu ([0-9.]+), chrf ([0-9.]+)", out)
    assert m, out
    exact, bleu, chrf = map(float, m.groups())
    print(f"\nvalidation exact match {exact:.3f} (BLEU {bleu:.1f}, chrF {chrf:.1f}) on 500 held-out sentences")
    assert exact >= THRESHOLD
    assert re.search(rf"Registered {MODEL_NAME} version \d+ \(alias staging\): registry://{MODEL_NAME}/\d+", out)

    from rayfleet.registry.store import Registry

    info = Registry().by_alias(MODEL_NAME, "staging")
    assert info.metrics["exact_match"] == pytest.approx(exact, abs=1e-3)
    assert (Path(info.source) / "config.json").is_file()


def test_models_cli_lists_the_version(trained):
    r = rayfleet_cli("models")
    assert r.returncode == 0, r.stderr
    assert MODEL_NAME in r.stdout and "staging" in r.stdout
    r = rayfleet_cli("models", "show", MODEL_NAME, "1")
    assert r.returncode == 0 and "exact_match" in r.stdout
    # ... and the Python API the CLI stands on
    import rayfleet

    models = {m.name: m for m in rayfleet.connect().models()}
    assert "1" in [v.version for v in models[MODEL_NAME].versions]


def test_promote_and_serve_registry_ref(trained, serve_target):
    _, tmp, _ = trained
    r = rayfleet_cli("models", "promote", MODEL_NAME, "1", "--alias", "production")
    assert r.returncode == 0, r.stderr
    assert f"{MODEL_NAME}@production -> version 1" in r.stdout

    r = rayfleet_cli("serve", "--model", f"registry://{MODEL_NAME}@production", "--name", "trained",
                     "--route-prefix", "/trained", "--timeout", "300")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        from rayfleet.train.data import read_pairs

        held_out = read_pairs(tmp / "data" / "validation.tsv")[:3]
        url = f"http://127.0.0.1:{serve_target.serve_port}/trained/translate"
        got = httpx.post(url, json={"texts": [en for en, _ in held_out]}, timeout=60).json()["translations"]
        for (en, fr), hyp in zip(held_out, got):
            print(f"{en!r} -> {hyp!r}")
        assert got == [fr for _, fr in held_out]
    finally:
        rayfleet_cli("services", "delete", "trained")


def test_jobs_cli_lists_the_run(trained):
    r = rayfleet_cli("jobs")
    assert r.returncode == 0, r.stderr
    assert "tiny-test" in r.stdout and "SUCCEEDED" in r.stdout
    import rayfleet

    assert any(j.name == "tiny-test" and j.kind == "train" and j.status == "SUCCEEDED"
               for j in rayfleet.connect().jobs())


@pytest.mark.faults
def test_killed_worker_resumes_from_its_last_checkpoint(trained):
    out, _, k = trained
    assert k.killed is not None, "the run ended before the kill step"
    assert k.resumed_from is not None, f"no resumed worker group (starts={k.starts})"
    steps_redone = k.max_before_resume - k.resumed_from
    print(f"\nkilled worker pid {k.killed} at step ~{k.last_before_kill}; resumed from the checkpoint at step "
          f"{k.resumed_from}; steps redone {steps_redone} (checkpoint interval {CHECKPOINT_EVERY})")
    assert k.resumed_from % CHECKPOINT_EVERY == 0 and k.resumed_from > 0
    assert steps_redone <= CHECKPOINT_EVERY
    # what the user sees; the target was still reached (test_train_reaches_exact_match_and_registers)
    assert f"Worker group restarted: resuming from the checkpoint at step {k.resumed_from}." in out


def test_prometheus_saw_the_loss_fall_and_top_showed_the_job(trained, prometheus):
    """Rank 0's gauges in the session's Prometheus (`up --local --monitoring`): the loss falls over the run
    (the killed worker's group and the resumed one alike), the evaluation's exact match is there, and
    `rayfleet top` showed the running job with its step, total and loss."""
    import requests

    from rayfleet.jobs.metrics import TRAIN

    _, _, k = trained
    r = requests.get(f"{prometheus}/api/v1/query_range", timeout=30, params={
        "query": f'max({TRAIN["loss"]}{{job_id="{k.job}"}})', "start": k.started, "end": time.time(), "step": 2})
    assert r.status_code == 200, r.text
    series = r.json()["data"]["result"]
    assert series, f"no loss for {k.job} in Prometheus"
    losses = [float(v) for _, v in series[0]["values"]]
    print(f"loss in Prometheus over the run ({len(losses)} points, every 2 s): {losses[0]:.3f} ... {losses[-1]:.3f}")
    assert len(set(losses)) >= 3 and losses[-1] < 0.5 * losses[0]
    r = requests.get(f"{prometheus}/api/v1/query_range", timeout=30, params={
        "query": f'max({TRAIN["eval"]}{{job_id="{k.job}", metric="exact_match"}})', "start": k.started,
        "end": time.time(), "step": 2})
    evals = r.json()["data"]["result"]
    assert evals and max(float(v) for _, v in evals[0]["values"]) > 0.5, evals

    assert k.top is not None, "the run ended before step 250"
    top_out, _ = k.top.communicate(timeout=120)
    print(top_out)
    assert k.top.returncode == 0, top_out
    row = next((ln.split() for ln in top_out.splitlines() if ln.split()[:1] == [k.job]), None)
    assert row is not None, top_out
    _, kind, done, total, pct, rate, loss = row
    assert (kind, total) == ("train", "300") and 100 <= int(done) <= 300 and float(loss) < losses[0], row


def test_every_grafana_panel_has_data_after_training_and_a_load(trained, prometheus, translator, tmp_path):
    """`rayfleet metrics grafana`: every PromQL expression of the rayfleet dashboard (bulk jobs' aside:
    test_translate_file) returns data from the real Prometheus after this module's training run and a short
    load on the translator; every expression of Ray's own dashboards is PromQL Prometheus accepts."""
    import json

    import requests

    from rayfleet.cluster import grafana
    from rayfleet.testing.load import Load

    r = rayfleet_cli("metrics", "grafana", "-o", str(tmp_path / "grafana"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"for Prometheus at {prometheus} to {tmp_path / 'grafana'}" in r.stdout
    dashboards = {f.name: json.loads(f.read_text()) for f in (tmp_path / "grafana" / "dashboards").glob("*.json")}
    ours = dashboards.pop("rayfleet.json")

    _, url = translator
    with Load(url.rstrip("/"), clients=2) as load:
        load.wait_for(20)
    start = time.time() - 3600

    def has_data(expr: str) -> bool:
        q = requests.get(f"{prometheus}/api/v1/query_range", timeout=30,
                         params={"query": grafana.concrete(expr, ours), "start": start, "end": time.time(),
                                 "step": 15}).json()
        assert q["status"] == "success", (expr, q)
        # each series labelled as the panel's legend says (a label Prometheus renamed would be missing)
        grouped = {x.strip() for g in re.findall(r"by \(([^)]*)\)", expr) for x in g.split(",")} - {"le"}
        for s in q["data"]["result"]:
            assert grouped <= set(s["metric"]), (expr, s["metric"])
        return any(s["values"] for s in q["data"]["result"])

    wanted = [e for e in grafana.expressions(ours) if "rayfleet_bulk_" not in e]
    deadline = time.monotonic() + 90   # Ray's agents export every ~10 s; Prometheus scrapes every 5 s
    while missing := [e for e in wanted if not has_data(e)]:
        assert time.monotonic() < deadline, f"no data for: {missing}"
        time.sleep(5)
    print(f"{len(wanted)} rayfleet panel expressions, each with data")

    checked = 0
    for name, d in dashboards.items():
        for e in grafana.expressions(d):
            q = requests.get(f"{prometheus}/api/v1/query", params={"query": grafana.concrete(e, d)}, timeout=30)
            assert q.status_code == 200 and q.json()["status"] == "success", (name, e, q.text[:300])
            checked += 1
    print(f"{checked} expressions of Ray's {len(dashboards)} dashboards accepted by Prometheus")




def _browse(url: str, screenshot: Path, budget_ms: int = 12_000) -> str:
    """``url`` in headless Chromium (the distribution's; ./test installs it), with ``budget_ms`` of virtual time
    for the page's scripts and requests: the rendered page's text; its screenshot is saved at ``screenshot``."""
    import shutil
    from html.parser import HTMLParser

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "no chromium on PATH (./test installs the distribution's package)"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    r = subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,1000", f"--virtual-time-budget={budget_ms}",
                        "--run-all-compositor-stages-before-draw", f"--screenshot={screenshot}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and screenshot.is_file() and screenshot.stat().st_size > 10_000, r.stderr[-2000:]

    class Text(HTMLParser):   # the text a reader sees: no scripts, no styles
        def __init__(self):
            super().__init__()
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag):
            self.skip -= tag in ("script", "style") and self.skip > 0

        def handle_data(self, data):
            if not self.skip and data.strip():
                self.parts.append(data.strip())

    parser = Text()
    parser.feed(r.stdout)
    return " ".join(parser.parts)


def test_rayfleet_ui_shows_the_run_with_its_loss_curve(trained):
    """`rayfleet ui`: MLflow's own server on the session's registry, on loopback; through it (the API its pages
    read) the training run with its loss history, falling; in headless Chromium, the run's page with its
    metric charts (screenshot in test-artifacts/); a second one on the same port, and a taken port, are one
    clear error each."""
    import requests

    from conftest import _BASE

    port = _BASE + 781
    exe = str(Path(sys.executable).parent / "rayfleet")
    p = subprocess.Popen([exe, "ui", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        # A second one while the first starts (its port not yet taken): one clear error, not the first one's URL.
        deadline = time.monotonic() + 30
        while not (Path(os.environ["RAYFLEET_HOME"]) / "logs" / f"mlflow-ui-{port}.log").exists():
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.05)
        r = rayfleet_cli("ui", "--port", str(port))
        assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
        assert r.stderr.startswith(f"error: 'rayfleet ui' on port {port} is already running (or starting) here."), \
            r.stderr
        url = p.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}", url + p.stderr.read()
        assert requests.get(url, timeout=30).status_code == 200   # the UI's page
        api = f"{url}/ajax-api/2.0/mlflow"
        exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "tiny-test"}, timeout=30)
        assert exp.status_code == 200, exp.text
        runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp.json()["experiment"]["experiment_id"]]},
                             timeout=30).json()["runs"]
        _, _, k = trained
        (run,) = [r for r in runs if r["info"]["run_name"] == k.job]
        history = requests.get(f"{api}/metrics/get-history", timeout=30,
                               params={"run_id": run["info"]["run_id"], "metric_key": "loss"}).json()["metrics"]
        losses = [m["value"] for m in sorted(history, key=lambda m: m["step"])]
        print(f"loss in MLflow's UI: {losses}")
        assert len(losses) >= 3 and losses[-1] < losses[0]

        # The page itself, in a real browser: the run's metric charts, rendered by MLflow's app.
        page = f"{url}/#/experiments/{exp.json()['experiment']['experiment_id']}/runs/{run['info']['run_id']}/model-metrics"
        shot = ARTIFACTS / "rayfleet-ui-run.png"
        text = _browse(page, shot)
        print(f"rayfleet ui, {page}: screenshot {shot} ({shot.stat().st_size} bytes)")
        # the run's name as its title, and its loss chart's series (MLflow labels a series "RUN (METRIC)")
        assert "Model metrics" in text and f"{k.job} (loss)" in text, text[:3000]

        # The port taken by something else (a server of another user, say): one clear error too.
        r = rayfleet_cli("ui", "--port", str(port), env={"RAYFLEET_HOME": str(Path(os.environ["RAYFLEET_HOME"]) /
                                                                              "elsewhere")})
        assert r.returncode == 1 and r.stderr.startswith(f"error: Port {port} on 127.0.0.1 is taken."), r.stderr
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert p.returncode == 0
