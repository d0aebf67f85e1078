"""A model directory of this machine, put where a fleet's nodes read it: the fleet's shared storage,
content-addressed (the same files twice: one copy), whole or not at all; on the local cluster, as is."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_the_copy_of_a_private_dir_is_readable_by_the_nodes_user(tmp_path):
    src = _model(tmp_path / "here")
    for path in (src, src / "sub", src / "sub" / "weights.bin", src / "config.json"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    storage = tmp_path / "shared"
    storage.mkdir()
    copy = to_storage(str(src), storage)
    modes = {str(p.relative_to(copy)): oct(p.stat().st_mode & 0o777) for p in [Path(copy), *Path(copy).rglob("*")]}
    assert modes == {".": "0o755", "config.json": "0o644", "sub": "0o755", "sub/weights.bin": "0o644"}


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


def test_a_training_jobs_data_files_and_base_model_go_to_the_fleets_storage(tmp_path):
    from rayfleet.config.fleet import FleetSpec
    from rayfleet.config.job import JobSpec
    from rayfleet.train.launch import on_fleet

    here = tmp_path / "here"
    base = _model(here)
    (here / "train.tsv").write_text("a\tb\n")
    (here / "valid.tsv").write_text("c\td\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    fleet = FleetSpec.model_validate({"name": "f", "head": {"host": "10.0.0.1"}, "storage": {"path": str(shared)}})
    spec = JobSpec.model_validate({"name": "j", "model": {"base": str(base)},
                                   "data": {"train": str(here / "train.tsv"), "validation": str(here / "valid.tsv")}})
    seen: list[str] = []
    out = on_fleet(spec, fleet, progress=seen.append)
    assert out.storage_path == str(shared)
    assert Path(out.data.train).parent == shared / "data" and Path(out.data.train).read_text() == "a\tb\n"
    assert Path(out.data.validation).name.startswith("valid-") and Path(out.data.validation).suffix == ".tsv"
    assert Path(out.model.base).parent == shared / "models" and (Path(out.model.base) / "sub" / "weights.bin").is_file()
    assert [m.split(" (")[0] for m in seen] == ["copying train.tsv to the fleet's storage",
                                                "copying valid.tsv to the fleet's storage",
                                                "copying the model to the fleet's storage"]
    assert on_fleet(out, fleet) == out   # on the storage already: as it is
