"""``rayfleet.connect()`` on the session cluster: which cluster, Ray itself with the token,
translation and services. (A training run through the API is what ``rayfleet train`` does:
test_train.py runs one and reads its jobs and models back through the API.)
Cost: ~1 min on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rayfleet
from conftest import ROOT
from rayfleet.errors import ClusterNotRunning, ConfigError, ServeError
from rayfleet.testing.tiny_model import SAMPLE_TEXTS, greedy_translations

pytestmark = pytest.mark.integration


def test_connect_finds_the_local_cluster_and_ray_init_uses_its_token(local_cluster, tmp_path):
    c = rayfleet.connect()
    assert c.target.local == local_cluster and c.address == local_cluster.gcs_address
    assert c.description == f"local cluster {local_cluster.gcs_address}"
    # ray.init through the API after `import ray` (Ray reads its auth settings once per process).
    script = ("import ray, rayfleet\nrayfleet.connect().init()\n"
              "print(ray.get(ray.remote(lambda: 6 * 7).remote()), ray.cluster_resources()['CPU'])\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["42", "5.0"]
    # Without the token, Ray refuses: the token is what init adds.
    r = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={c.address!r})"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")})
    assert r.returncode != 0 and "Authentication token is missing or incorrect" in r.stderr


def test_connect_errors(local_cluster, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such file"):
        rayfleet.connect(tmp_path / "nope.yaml")
    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClusterNotRunning) as e:
        rayfleet.connect()
    assert e.value.hint == "Start one with: rayfleet up --local"


def test_translate_services_and_models_through_the_api(translator, tiny_model):
    spec, url = translator
    c = rayfleet.connect()
    assert [(s.name, s.kind, s.url) for s in c.services() if s.name == "translator"] == [("translator", "translator",
                                                                                          url)]
    expected = greedy_translations(tiny_model, SAMPLE_TEXTS[:2], max_new_tokens=spec.generation.max_new_tokens)
    assert c.translate(SAMPLE_TEXTS[:2]) == [expected[t] for t in SAMPLE_TEXTS[:2]]
    assert c.translate(SAMPLE_TEXTS[0], service="translator") == expected[SAMPLE_TEXTS[0]]
    with pytest.raises(ServeError, match="No service named 'nope'"):
        c.translate("x", service="nope")
