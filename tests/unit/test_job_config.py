"""job.yaml validation and data-file checks: exact messages, before anything is submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayfleet.config.job import JobSpec
from rayfleet.config.loader import load_model
from rayfleet.errors import ConfigError, DataError, RegistryError
from rayfleet.registry.refs import parse_ref, registry_uri
from rayfleet.train.data import check_file
from rayfleet.train.launch import load_job

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
_MIN = "name: t\ndata:\n  synthetic: {}\n"


def _error(tmp_path: Path, text: str) -> str:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_model(JobSpec, p)
    return e.value.message.replace(str(tmp_path) + "/", "")


def test_examples_load():
    for name in ("finetune-tiny.yaml", "finetune-en-fr.yaml"):
        spec = load_job(ROOT / "examples" / name)
        assert spec.register is not None


def test_minimal_spec_defaults():
    spec = JobSpec.model_validate({"name": "t", "data": {"synthetic": {}}})
    assert spec.training.max_steps == 500 and spec.scaling.num_workers == 2
    assert spec.model.from_scratch and spec.model.arch.d_model == 128


def test_unknown_key_suggests(tmp_path):
    assert _error(tmp_path, _MIN + "trainng:\n  lr: 0.1\n") == (
        "job.yaml:4:1: trainng: unknown key 'trainng' — did you mean 'training'?")


def test_nested_unknown_key(tmp_path):
    assert _error(tmp_path, _MIN + "scaling:\n  num_worker: 2\n") == (
        "job.yaml:5:3: scaling.num_worker: unknown key 'num_worker' — did you mean 'num_workers'?")


def test_files_or_synthetic(tmp_path):
    assert _error(tmp_path, "name: t\ndata:\n  train: a.tsv\n") == (
        "job.yaml:3:3: data: give both train and validation files (or synthetic: {})")


def test_epochs_or_steps(tmp_path):
    assert _error(tmp_path, _MIN + "training:\n  lr: 0.001\n") == (
        "job.yaml:5:3: training: give epochs or max_steps")


def test_bad_bound(tmp_path):
    assert _error(tmp_path, _MIN + "scaling:\n  num_workers: 0\n") == (
        "job.yaml:5:16: scaling.num_workers: got 0; input should be greater than or equal to 1")


def test_architecture_heads(tmp_path):
    msg = _error(tmp_path, _MIN + "model:\n  architecture: {d_model: 100, attention_heads: 3}\n")
    assert msg == ("job.yaml:5:17: model.architecture: d_model (100) must be a multiple of "
                   "attention_heads (3)")


def test_register_name(tmp_path):
    assert _error(tmp_path, _MIN + "register:\n  model_name: 'en fr'\n") == (
        "job.yaml:5:15: register.model_name: got 'en fr'; use letters, digits, '.', '_' and '-', e.g. 'en-fr'")


def test_search_distribution(tmp_path):
    assert _error(tmp_path, _MIN + "search:\n  lr: {loguniform: [0.01, 0.001]}\n") == (
        "job.yaml:5:7: search.lr: low (0.01) must be below high (0.001)")


def test_paths_are_relative_to_the_spec(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "job.yaml"
    p.write_text("name: t\ndata:\n  train: d/train.tsv\n  validation: /abs/v.tsv\n")
    spec = load_job(p)
    assert spec.data.train == str(tmp_path / "sub" / "d" / "train.tsv")
    assert spec.data.validation == "/abs/v.tsv"


def test_json_round_trip():
    spec = load_job(ROOT / "examples" / "finetune-tiny.yaml")
    assert JobSpec.from_json(spec.to_json()) == spec


# --- data files -------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        check_file(tmp_path / "nope.tsv", "train")
    assert e.value.message == f"The train file {tmp_path}/nope.tsv does not exist."


def test_empty_file(tmp_path):
    (tmp_path / "v.tsv").write_text("\n\n")
    with pytest.raises(DataError) as e:
        check_file(tmp_path / "v.tsv", "validation")
    assert e.value.message == f"The validation file {tmp_path}/v.tsv is empty (no sentence pairs)."


def test_wrong_columns_tsv(tmp_path):
    (tmp_path / "t.tsv").write_text("en\tfr\nthe cat\tle chat\nthe dog\tle chien\textra\n")
    with pytest.raises(DataError) as e:
        check_file(tmp_path / "t.tsv", "train")
    assert e.value.message == f"{tmp_path}/t.tsv:3: expected 2 tab-separated columns (en, fr), got 3."
    assert e.value.hint == "Each line needs two tab-separated columns: english<TAB>french."


def test_wrong_columns_jsonl(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"source": "the cat", "target": "le chat"}\n')
    with pytest.raises(DataError) as e:
        check_file(tmp_path / "t.jsonl", "train")
    assert e.value.message == (f"{tmp_path}/t.jsonl:1: missing string field(s) en, fr "
                               "(keys found: source, target).")


def test_header_and_blank_lines_are_skipped(tmp_path):
    (tmp_path / "t.tsv").write_text("en\tfr\n\nthe cat\tle chat\n")
    assert check_file(tmp_path / "t.tsv", "train") == 1


# --- registry refs ------------------------------------------------------------------


def test_registry_refs():
    assert parse_ref("registry://en-fr/3").version == "3"
    assert parse_ref("registry://en-fr@production").alias == "production"
    with pytest.raises(RegistryError) as e:
        parse_ref("registry://en-fr")
    assert e.value.message == ("Got 'registry://en-fr' for a registry reference; expected "
                               "registry://NAME/VERSION or registry://NAME@ALIAS.")


def test_registry_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYFLEET_REGISTRY_URI", raising=False)
    assert registry_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("RAYFLEET_REGISTRY_URI", "postgresql://u:p@127.0.0.1:5/db")
    assert registry_uri(None, tmp_path) == "postgresql://u:p@127.0.0.1:5/db"
    assert registry_uri("sqlite:////x.db", tmp_path) == "sqlite:////x.db"


def test_the_loop_config_carries_a_trials_overrides_and_refuses_unknown_keys():
    from rayfleet.train.loop import LoopConfig

    spec = JobSpec.model_validate({"name": "tiny", "model": {"base": "/m"},
                                   "data": {"train": "/d/train.tsv", "validation": "/d/v.tsv"}})
    sent = LoopConfig(spec=spec, tokenizer="/t", base="/m", tracking={"uri": "sqlite:///x.db", "run_id": "r1"},
                      lr=1e-3, batch_size=24.7).model_dump(mode="json")   # as Ray Train pickles it
    cfg = LoopConfig.model_validate(sent)
    assert cfg.spec == spec and cfg.tracking.run_id == "r1"
    t = cfg.training()
    assert (t.lr, t.batch_size, t.warmup_steps) == (1e-3, 24, spec.training.warmup_steps)
    with pytest.raises(ValueError, match="dropout"):  # a search key the loop would ignore
        LoopConfig.model_validate({**sent, "dropout": 0.1})


def test_resume_refuses_what_it_cant_resume_before_submitting(tmp_path):
    """`train --resume RUN_ID`: an unknown run, a run of another job, a run without a checkpoint: each a clear
    error before anything is submitted (no cluster is asked: the client here is None)."""
    from rayfleet.errors import TrainError
    from rayfleet.train.launch import TrainJob, resume

    spec = JobSpec.model_validate({"name": "t", "data": {"synthetic": {}}, "storage_path": str(tmp_path)})
    with pytest.raises(TrainError) as e:
        resume(None, spec, "t-20261202-000000-ab12")
    assert e.value.message == f"No run 't-20261202-000000-ab12' in {tmp_path / 'runs'}."
    with pytest.raises(TrainError):
        resume(None, spec, "../../etc")   # a run id is a name, not a path
    run = tmp_path / "runs" / "u-1"
    run.mkdir(parents=True)
    other = spec.model_copy(update={"name": "u"})
    job = TrainJob(mode="train", spec=other, run_name="u-1", run_dir=str(run), train_storage=str(run.parent),
                   registry_uri=None, artifact_root=str(tmp_path / "mlartifacts"))
    (run / "job.json").write_text(job.model_dump_json())
    with pytest.raises(TrainError) as e:
        resume(None, spec, "u-1")
    assert e.value.message == "Run u-1 is a run of job 'u', not of 't'."
    with pytest.raises(TrainError) as e:
        resume(None, other, "u-1")
    assert e.value.message == "Run u-1 has no checkpoint to resume from (it stopped before its first one)."
    assert e.value.hint == "Start it afresh: rayfleet train JOB.yaml"


def test_data_ingest_by_the_training_files_size(tmp_path):
    from rayfleet.train.data import DRIVER_MAX_BYTES, ingest_in_driver

    small, large = tmp_path / "small.tsv", tmp_path / "large.tsv"
    small.write_text("The cat sleeps.\tLe chat dort.\n")
    with large.open("wb") as f:
        f.truncate(DRIVER_MAX_BYTES + 1)
    assert ingest_in_driver("auto", str(small)) and not ingest_in_driver("auto", str(large))
    assert ingest_in_driver("driver", str(large)) and not ingest_in_driver("ray_data", str(small))
    assert "data.ingest" in _error(tmp_path, "name: t\ndata:\n  synthetic: {}\n  ingest: spark\n")
