"""Bad input to `rayfleet train`: one clear error before anything is submitted or registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import rayfleet_cli
from rayfleet.cluster import local
from rayfleet.jobs.submit import JobsClient

pytestmark = pytest.mark.integration

_SPEC = """\
name: bad-input
data:
  train: {train}
  validation: {validation}
training:
  max_steps: 10
{extra}"""


def _spec(tmp: Path, *, train: str = "train.tsv", validation: str = "validation.tsv", extra: str = "") -> Path:
    p = tmp / "job.yaml"
    p.write_text(_SPEC.format(train=train, validation=validation, extra=extra))
    return p


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "train.tsv").write_text("the cat sleeps\tle chat dort\n")
    (tmp_path / "validation.tsv").write_text("the dog sleeps\tle chien dort\n")
    return tmp_path


def _fails(spec: Path) -> tuple[str, str]:
    r = rayfleet_cli("train", str(spec))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    return lines[0], lines[-1]


@pytest.fixture
def no_new_jobs(local_cluster):
    client = JobsClient(local_cluster.dashboard_url, local.auth_headers(local_cluster))
    before = {j.id for j in client.list()}
    yield
    assert {j.id for j in client.list()} == before


def test_missing_data_file(data, no_new_jobs):
    err, hint = _fails(_spec(data, train="nope.tsv"))
    assert err == f"error: The train file {data}/nope.tsv does not exist."
    assert hint == "hint: Fix data.train in the job spec (paths are relative to the spec file)."


def test_wrong_columns(data, no_new_jobs):
    (data / "train.tsv").write_text("the cat sleeps;le chat dort\n")
    err, hint = _fails(_spec(data))
    assert err == f"error: {data}/train.tsv:1: expected 2 tab-separated columns (en, fr), got 1."
    assert hint == "hint: Each line needs two tab-separated columns: english<TAB>french."


def test_wrong_fields_jsonl(data, no_new_jobs):
    (data / "v.jsonl").write_text('{"english": "the cat", "french": "le chat"}\n')
    err, _ = _fails(_spec(data, validation="v.jsonl"))
    assert err == f"error: {data}/v.jsonl:1: missing string field(s) en, fr (keys found: english, french)."


def test_empty_file(data, no_new_jobs):
    (data / "validation.tsv").write_text("")
    err, _ = _fails(_spec(data))
    assert err == f"error: The validation file {data}/validation.tsv is empty (no sentence pairs)."


def test_unknown_registry_ref(data, no_new_jobs):
    err, hint = _fails(_spec(data, extra="model:\n  base: registry://no-such-model/3\n"))
    assert err.startswith("error: No registered model 'no-such-model' (")
    assert hint == "hint: List them with: rayfleet models"


def test_unreachable_database(data, no_new_jobs):
    extra = "register:\n  model_name: bad\n  tracking_uri: postgresql://rayfleet:secret@127.0.0.1:1/registry\n"
    err, hint = _fails(_spec(data, extra=extra))
    assert err.startswith("error: Can't reach the registry database postgresql")
    assert "secret" not in err
    assert hint.startswith("hint: Check host, port, user, password and database name")


def test_spec_error_names_line(data, no_new_jobs):
    err, _ = _fails(_spec(data, extra="trainng:\n  lr: 0.1\n"))
    assert err == f"error: {data}/job.yaml:7:1: trainng: unknown key 'trainng' — did you mean 'training'?"
