"""Train a tiny Marian from scratch with 2 DDP workers as a Ray Job, register it, serve it.

The run goes through the real CLI (``rayfleet train``), the real Ray Train / Ray
Data / MLflow stack and a real Serve deployment of ``registry://NAME/VERSION``;
the served model must translate held-out sentences word for word.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from conftest import rayfleet_cli

pytestmark = pytest.mark.integration

THRESHOLD = 0.9
MODEL_NAME = "en-fr-test"


def write_spec(tmp: Path, *, name: str, model_name: str, max_steps: int = 500, extra: str = "") -> Path:
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


@pytest.fixture(scope="module")
def trained(local_cluster, tmp_path_factory):
    """Run `rayfleet train` once; yield (cli output, spec path)."""
    tmp = tmp_path_factory.mktemp("train")
    spec = write_spec(tmp, name="tiny-test", model_name=MODEL_NAME)
    r = rayfleet_cli("train", str(spec), "--quiet", timeout=900)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, tmp


def test_train_reaches_exact_match_and_registers(trained):
    out, _ = trained
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
    _, tmp = trained
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
