"""The typed contracts between a job and its client: the event lines, the driver's last word,
and job.json, written and read through the same models (no Ray)."""

from __future__ import annotations

import json

import pytest

from rayfleet.errors import RayfleetError, TrainError
from rayfleet.jobs import events
from rayfleet.jobs.driver import run_driver

pytestmark = pytest.mark.unit


def _emitted(capsys, event: events.Event) -> str:
    events.emit(event)
    out = capsys.readouterr().out
    assert out.startswith(events.MARKER) and out.endswith("\n") and out.count("\n") == 1
    return out.rstrip("\n")


def test_every_event_reads_back_as_it_was_written(capsys):
    train = [events.Phase(name="starting workers", waits_for_resources=True),
             events.TrainStart(total_steps=500, steps_per_epoch=50, workers=2, pids=[11, 12],
                               nodes=["10.0.0.1", "10.0.0.2"], train_pairs_per_worker=800),
             events.TrainProgress(step=20, total_steps=500, epoch=1, epochs=10, loss=1.5, lr=1e-4,
                                  samples_per_s=80.5),
             events.Eval(step=100, bleu=60.2, chrf=76.3, exact_match=0.358),
             events.Checkpoint(step=100), events.MlflowRun(run_id="abc"), events.Warning(message="w"),
             events.Trial(trial=0, config={"lr": 1e-4}, metrics={"bleu": 1.0}),
             events.TrainResult(metrics={"bleu": 99.0}, checkpoint="/ckpt", model="m", version="1",
                                aliases=["staging"]),
             events.Error(message="boom", hint="fix it")]
    for ev in train:
        assert events.parse(_emitted(capsys, ev), events.TrainEvent) == ev
    bulk = [events.BulkStart(lines=300, parts=3, parts_done=1, lines_done=100, part_size=100),
            events.BulkProgress(lines_done=200, lines=300, lines_per_s=12.5, parts_written=2),
            events.BulkResult(output="/o.jsonl", errors_file=None, lines=300, translated=299, bad=1,
                              bad_lines=[(7, "not JSON")], parts=3, parts_skipped=1, parts_translated=2,
                              actors=2, seconds=10.0, lines_per_s=20.0)]
    for ev in bulk:
        assert events.parse(_emitted(capsys, ev), events.BulkEvent) == ev


def test_ray_prefixed_worker_lines_and_other_lines(capsys):
    line = _emitted(capsys, events.Checkpoint(step=3))
    assert events.parse(f"(RayTrainWorker pid=4242) {line}", events.TrainEvent) == events.Checkpoint(step=3)
    assert events.parse("step 3 done", events.TrainEvent) is None


def test_a_renamed_field_fails_at_validation_naming_the_event_and_field():
    line = events.MARKER + json.dumps({"event": "progress", "step": 1, "total": 5, "epoch": 1, "epochs": 1,
                                       "loss": 1.0, "lr": 0.1, "samples_per_s": 1.0})
    with pytest.raises(RayfleetError) as e:
        events.parse(line, events.TrainEvent)
    assert e.value.message.startswith("The job wrote an event this rayfleet can't read (progress.total_steps: "
                                      "Field required)")
    assert "another rayfleet version" in e.value.hint
    with pytest.raises(RayfleetError, match=r"\(event: Input tag 'trial' found using 'event' does not match"):
        events.parse(events.MARKER + json.dumps({"event": "trial", "trial": 0}), events.BulkEvent)
    with pytest.raises(ValueError):  # the emitting side validates too
        events.TrainStart(total_steps=1)


def test_the_driver_ends_every_log_with_one_event(capsys):
    def load(arg: str) -> dict:
        return {"id": "job-1", "arg": arg}

    assert run_driver(["x"], "prog JOB", load, lambda job: events.Checkpoint(step=len(job["arg"])),
                      lambda job: job["id"]) == 0
    assert capsys.readouterr().out == events.MARKER + '{"event":"checkpoint","step":1}\n'

    def fails(job):
        raise TrainError("The data is bad.", hint="Fix the data.") from OSError("disk")

    assert run_driver(["x"], "prog JOB", load, fails, lambda job: job["id"]) == 1
    out, err = capsys.readouterr()
    assert events.parse(out.splitlines()[-1], events.TrainEvent) == events.Error(message="The data is bad.",
                                                                                 hint="Fix the data.")
    assert "OSError: disk" in err

    def crashes(job):
        raise KeyError("spec")

    assert run_driver(["x"], "prog JOB", load, crashes, lambda job: job["id"]) == 1
    assert events.parse(capsys.readouterr().out.splitlines()[-1], events.TrainEvent) == events.Error(
        message="KeyError: 'spec'", hint="See the full log with: rayfleet jobs logs job-1")

    assert run_driver([], "prog JOB", load, crashes, lambda job: job["id"]) == 2
    assert capsys.readouterr().err == "usage: prog JOB\n"


def test_job_json_round_trips_and_refuses_unknown_keys(tmp_path):
    from rayfleet.config.job import JobSpec
    from rayfleet.train.launch import TrainJob

    spec = JobSpec.model_validate({"name": "tiny", "model": {"base": "/m"},
                                   "data": {"train": "/d/train.tsv", "validation": "/d/v.tsv"}})
    job = TrainJob(mode="train", spec=spec, run_name="tiny-1", run_dir="/r", train_storage="/s/runs",
                   registry_uri=None, artifact_root="/s/mlartifacts")
    path = tmp_path / "job.json"
    path.write_text(job.model_dump_json())
    assert TrainJob.read(path) == job
    path.write_text(json.dumps({**json.loads(job.model_dump_json()), "run_nam": "x"}))
    with pytest.raises(ValueError, match="run_nam"):
        TrainJob.read(path)



def test_bulk_job_round_trips_and_a_mismatched_one_is_a_clear_error(capsys):
    from rayfleet.bulk.plan import BulkJob

    job = BulkJob(input="/d/in.jsonl", output="/d/out.jsonl", model="/m", backend="ctranslate2", job_id="t-1")
    assert BulkJob.from_json(job.to_json()) == job
    with pytest.raises(ValueError, match="backend"):
        BulkJob(input="/i", output="/o", model="/m", backend="fast")
    # The driver of a job written by another rayfleet (a renamed field): one error event that says so.
    text = json.dumps({**json.loads(job.to_json()), "part_lines": 10})
    assert run_driver([text], "prog JOB_JSON", BulkJob.from_json, lambda j: None, lambda j: j.job_id) == 1
    error = events.parse(capsys.readouterr().out.splitlines()[-1], events.BulkEvent)
    assert error.message == ("This job's description does not match the rayfleet on the cluster (part_lines: "
                             "Extra inputs are not permitted).")
    assert error.hint == "Install the same rayfleet version here and on the cluster's nodes."

def test_foreign_errors_read_through_one_table():
    import requests

    from rayfleet.errors import JobError, describe_foreign, foreign

    with pytest.raises(JobError) as e:
        with foreign(JobError, "Can't list jobs at http://h:1"):
            raise requests.exceptions.ConnectionError("Max retries exceeded")
    assert e.value.message == "Can't list jobs at http://h:1: can't connect"
    assert e.value.hint.startswith("Is the cluster up")
    assert describe_foreign(RuntimeError("Request failed with status code 401: Unauthorized"))[0] == \
        "the cluster refused rayfleet's token (HTTP 401)"
    assert describe_foreign(RuntimeError("boom")) == ("RuntimeError: boom", None)
    with pytest.raises(TrainError, match="^ours$"):  # our own errors pass through
        with foreign(JobError, "x"):
            raise TrainError("ours")
