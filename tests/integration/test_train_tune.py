"""`rayfleet tune` end to end: a 2-trial search over lr (ASHA), each trial a 2-worker Ray Train
run inside one Ray Job on the 4-CPU test cluster; every trial's result is printed and the best
trial is registered.

Two trials one after the other on 4 CPUs also checks that a finished trial gives its workers'
CPUs back: 2 left reserved would leave the second trial waiting for resources forever.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import rayfleet_cli

pytestmark = pytest.mark.integration

MODEL_NAME = "en-fr-tune-test"
STEPS = 100


def write_spec(tmp: Path) -> Path:
    """A tiny from-scratch search on the synthetic corpus: one evaluation and checkpoint, at the end."""
    spec = tmp / "job.yaml"
    spec.write_text(f"""\
name: tune-test
model:
  base: from_scratch
data:
  synthetic: {{seed: 0, train_size: 2000, validation_size: 50}}
  max_source_length: 32
  max_target_length: 32
training:
  max_steps: {STEPS}
  batch_size: 16
  warmup_steps: 20
  seed: 0
scaling:
  num_workers: 2
  cpus_per_worker: 1
checkpoints:
  every_steps: {STEPS}
  keep: 1
failure:
  max_failures: 0
eval:
  every_steps: {STEPS}
register:
  model_name: {MODEL_NAME}
  alias: staging
search:
  lr: {{loguniform: [1.0e-3, 4.0e-3]}}
  metric: chrf
  max_concurrent: 1
""")
    return spec


def test_tune_runs_every_trial_and_registers_the_best(local_cluster, tmp_path):
    r = rayfleet_cli("tune", str(write_spec(tmp_path)), "--samples", "2", "--quiet", timeout=600)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr

    trials = re.findall(r"^trial (\d+): (\{.*\}) -> (.*)$", r.stdout, re.M)
    assert [t[0] for t in trials] == ["0", "1"], r.stdout
    chrf = {}
    for i, config, metrics in trials:
        m = re.search(r"chrf ([0-9.]+)", metrics)
        assert m, f"trial {i} ({config}) has no chrf: {metrics}"
        chrf[i] = float(m.group(1))
        print(f"trial {i}: {config} -> {metrics}")

    m = re.search(rf"Registered {MODEL_NAME} version (\d+) \(alias staging\): registry://{MODEL_NAME}/\d+", r.stdout)
    assert m, r.stdout
    from rayfleet.registry.store import Registry

    info = Registry().by_alias(MODEL_NAME, "staging")
    assert str(info.version) == m.group(1)
    assert info.metrics["chrf"] == pytest.approx(max(chrf.values()), abs=0.1)  # the best trial's model
    assert info.metrics["step"] == STEPS
    assert (Path(info.source) / "config.json").is_file()
