"""A model directory of this machine, put where a fleet's nodes read it: the fleet's shared storage,
content-addressed (the same files twice: one copy), whole or not at all; on the local cluster, as is."""

from __future__ import annotations

import os

import pytest

from rayfleet.errors import ConfigError, ModelError
from rayfleet.serve.models import for_fleet, to_storage

pytestmark = pytest.mark.unit


def _model(root, weights: bytes = b"w" * 1000):
    d = root / "opus-tiny"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub").mkdir()
    (d / "sub" / "weights.bin").write_bytes(weights)
    return d


def test_copied_once_by_content(tmp_path):
    storage = tmp_path / "shared"
    storage.mkdir()
    src = _model(tmp_path / "here")
    seen: list[str] = []
    first = to_storage(str(src), storage, progress=seen.append)
    assert first.startswith(f"{storage}/models/opus-tiny-") and (os.path.isfile(f"{first}/sub/weights.bin"))
    assert seen and seen[0].startswith("copying the model to the fleet's storage (0.0 MiB)")
    mtime = os.stat(first).st_mtime_ns
    assert to_storage(str(src), storage, progress=seen.append) == first      # the same files: no copy
    assert os.stat(first).st_mtime_ns == mtime and seen[-1].startswith("model already on the fleet's storage")
    (src / "sub" / "weights.bin").write_bytes(b"v" * 1000)                   # other files: another copy
    assert to_storage(str(src), storage) != first
    assert [p.name for p in (storage / "models").iterdir() if p.name.startswith(".")] == []  # no partial copy left
    assert to_storage(first, storage) == first                                # already on the storage


def test_for_the_local_cluster_as_is_and_a_fleet_without_storage_is_a_clear_error(tmp_path):
    src = str(_model(tmp_path))
    assert for_fleet(src, lambda: None) == src                                # local cluster: same machine
    assert for_fleet("Helsinki-NLP/opus-mt-en-fr", lambda: tmp_path) == "Helsinki-NLP/opus-mt-en-fr"

    def no_storage():
        raise ConfigError("Fleet 'lab' has no shared storage for runs, checkpoints and the model registry.",
                          hint="Add 'storage: {path: /mnt/shared}' to fleet.yaml.")

    with pytest.raises(ModelError) as e:
        for_fleet(src, no_storage)
    assert e.value.message == (f"The model {src} is a directory of this machine, which the fleet's nodes can't "
                               "read, and rayfleet can't put it on the fleet's storage: Fleet 'lab' has no shared "
                               "storage for runs, checkpoints and the model registry.")
    assert e.value.hint == "Add 'storage: {path: /mnt/shared}' to fleet.yaml."
