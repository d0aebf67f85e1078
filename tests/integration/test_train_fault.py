"""Kill one training worker (by PID) mid-run: the run resumes from the last checkpoint and finishes.

The job's events carry the workers' PIDs (``start``) and the step reached
(``progress``); the restarted worker group announces the checkpoint step it
resumed from. Steps redone = last step seen before the failure - resumed step.
"""

from __future__ import annotations

import os
import signal

import pytest

from rayfleet.cluster import local
from rayfleet.jobs import events
from rayfleet.jobs.submit import JobsClient, follow_events
from rayfleet.train.launch import load_job, submit

from test_train import THRESHOLD, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CHECKPOINT_EVERY = 100
KILL_AT_STEP = 150  # half-way between two checkpoints


def test_killed_worker_resumes_from_checkpoint(local_cluster, tmp_path):
    spec = load_job(write_spec(tmp_path, name="tiny-fault", model_name="en-fr-fault", max_steps=400))
    client = JobsClient(local_cluster.dashboard_url, local.auth_headers(local_cluster))
    launch = submit(client, spec)

    seen = {"pids": [], "killed": None, "last_before_kill": 0, "max_before_resume": 0, "resumed_from": None,
            "starts": 0}

    def on_event(ev) -> None:
        if isinstance(ev, events.TrainStart):
            seen["starts"] += 1
            if seen["killed"] is None:
                seen["pids"] = ev.pids
            elif seen["resumed_from"] is None:
                seen["resumed_from"] = ev.resumed_from
        elif isinstance(ev, events.TrainProgress):
            if seen["killed"] is None:
                seen["last_before_kill"] = ev.step
                if ev.step >= KILL_AT_STEP:
                    seen["killed"] = seen["pids"][-1]  # a non-zero rank: the rank-0 process reports
                    os.kill(seen["killed"], signal.SIGKILL)
            if seen["resumed_from"] is None:
                seen["max_before_resume"] = max(seen["max_before_resume"], ev.step)

    out = follow_events(client, launch.job_id, events.TrainEvent, on_event=on_event)
    result, error = out.result, out.error
    killed_pid, resumed_from, starts = seen["killed"], seen["resumed_from"], seen["starts"]
    last_step_before_kill, max_step_before_resume = seen["last_before_kill"], seen["max_before_resume"]
    assert error is None, error
    assert killed_pid is not None, "the run ended before the kill step"
    assert resumed_from is not None, f"no resumed worker group (starts={starts})"
    steps_redone = max_step_before_resume - resumed_from
    exact = result.metrics["exact_match"]
    print(f"\nkilled worker pid {killed_pid} at step ~{last_step_before_kill}; resumed from the checkpoint "
          f"at step {resumed_from}; steps redone {steps_redone} (checkpoint interval {CHECKPOINT_EVERY}); "
          f"final exact match {exact:.3f}")
    assert resumed_from % CHECKPOINT_EVERY == 0 and resumed_from > 0
    assert steps_redone <= CHECKPOINT_EVERY
    assert exact >= THRESHOLD
    assert result.version == "1"
    assert client.info(launch.job_id).status == "SUCCEEDED"
