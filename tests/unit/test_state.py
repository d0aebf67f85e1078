"""State dir, token file and port plans (no Ray)."""

from __future__ import annotations

import os
import stat

import pytest

from rayfleet.cluster.state import LocalPorts, ensure_token, read_token
from rayfleet.errors import ClusterError
from rayfleet.serve.models import resolve_model
from rayfleet.errors import ModelError

pytestmark = pytest.mark.unit


def test_token_generated_once_mode_0600(tmp_path):
    path = ensure_token(tmp_path)
    first = path.read_text()
    assert len(first) == 64
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ensure_token(tmp_path).read_text() == first
    assert read_token(tmp_path) == first


def test_port_inside_worker_range_is_refused():
    with pytest.raises(ClusterError) as e:
        LocalPorts(gcs=15000).check()
    assert e.value.message == "The gcs port 15000 lies inside the worker port range 10002-19999."


def test_duplicate_ports_are_refused():
    with pytest.raises(ClusterError) as e:
        LocalPorts(serve=8265).check()
    assert e.value.message == "The dashboard and serve ports are both 8265; each needs its own port."


def test_missing_model_dir(tmp_path):
    with pytest.raises(ModelError) as e:
        resolve_model(str(tmp_path / "nope"))
    assert e.value.message == f"Model directory '{tmp_path / 'nope'}' does not exist."
    assert "--model" in e.value.hint


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelError) as e:
        resolve_model(str(tmp_path))
    assert e.value.message == f"'{tmp_path}' is not a model directory (no config.json in it)."


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        resolve_model("Helsinki-NLP/opus-mt-en-fr")
    assert e.value.message == ("Model 'Helsinki-NLP/opus-mt-en-fr' is not in the local Hugging Face cache "
                               "and HF_HUB_OFFLINE is set.")
