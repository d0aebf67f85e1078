"""What rayfleet does when Ray won't: a Jobs API that accepts and never answers (a dashboard just started
again by a restarted head took minutes in CI), and a tune run shorter than ASHA's grace period."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from rayfleet.errors import JobError
from rayfleet.jobs.submit import JobsClient

pytestmark = pytest.mark.unit


def test_listing_jobs_gives_up_with_a_clear_error_when_the_jobs_api_never_answers():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        held = []
        threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()   # accepts, says nothing
        client = JobsClient.__new__(JobsClient)   # (its Ray client would ask the silent server for its version)
        client.dashboard_url, client.headers = f"http://127.0.0.1:{server.getsockname()[1]}", {}
        t0 = time.monotonic()
        with pytest.raises(JobError) as e:
            client.list(timeout_s=1)
        assert time.monotonic() - t0 < 10
        assert e.value.message == f"The Jobs API at {client.dashboard_url} did not answer within 1 s."
        assert "started again" in e.value.hint


def test_a_tune_run_shorter_than_the_grace_period_stops_no_trial_early():
    from ray.tune.schedulers import ASHAScheduler

    from rayfleet.train.tune import asha

    with pytest.raises(AssertionError, match="grace_period must be <= max_t"):   # what `tune` failed with
        ASHAScheduler(time_attr="step", max_t=20, grace_period=40)
    assert asha(20, 40)._max_t == 20
    assert asha(500, 200)._max_t == 500


def test_reading_serves_state_gives_up_with_a_clear_error_when_the_dashboard_never_answers(monkeypatch):
    from rayfleet.errors import ServeError
    from rayfleet.serve import deploy

    monkeypatch.setattr(deploy, "STATE_TIMEOUT_S", 1)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        held = []
        threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()   # accepts, says nothing
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ServeError) as e:
            deploy._state(deploy.ServeTarget(dashboard_url=url, headers={}, serve_host="127.0.0.1", serve_port=8000,
                                                   public_host="127.0.0.1"))
        assert time.monotonic() - t0 < 10
        assert e.value.message == f"Serve's API at {url} did not answer within 1 s."


class _RayClientWhoseAgentIsDown:
    """Ray's JobSubmissionClient as it answers while the job's node has no job agent (a head just started again):
    its logs call fails with the dashboard's 500 (the text as CI saw it, shortened)."""

    def __init__(self, log: str | None):
        self.log, self.calls = log, 0

    def get_job_logs(self, job_id):
        self.calls += 1
        if self.log is None:
            raise RuntimeError("Request failed with status code 500: Traceback (most recent call last):\n"
                               "  File \".../aiohttp/connector.py\", line 1322, in _wrap_create_connection\n"
                               "ConnectionRefusedError: [Errno 111] Connect call failed ('192.0.2.2', 24794)\n")
        return self.log


def test_the_end_of_a_finished_jobs_log_is_read_once_more_and_an_unreadable_one_is_said_not_raised(monkeypatch, capsys):
    from rayfleet.jobs import submit

    monkeypatch.setattr(submit, "ENDED_LOG_WAIT_S", 1)
    client = JobsClient.__new__(JobsClient)
    client.dashboard_url, client.headers = "http://127.0.0.1:1", {}
    client._client = _RayClientWhoseAgentIsDown("tick 1\ntick 2\nran\n")   # the tail had seen "tick 1\ntick 2\n"
    assert list(client._poll_logs("j", 14, "", 0.1, None, ended=True)) == ["ran"]
    client._client = _RayClientWhoseAgentIsDown("tick 1\n")   # a shorter log (rotated): nothing said twice
    assert list(client._poll_logs("j", 14, "par", 0.1, None, ended=True)) == ["par"]
    client._client = agentless = _RayClientWhoseAgentIsDown(None)
    t0 = time.monotonic()
    lines = list(client._poll_logs("j", 14, "par", 0.1, None, ended=True))
    assert time.monotonic() - t0 < 5 and agentless.calls > 1   # tried again for ENDED_LOG_WAIT_S
    assert lines == ["par", "(rayfleet: the end of this job's log could not be read: ConnectionRefusedError: [Errno "
                            "111] Connect call failed ('192.0.2.2', 24794); try later: rayfleet jobs logs j)"]
    assert "The job agent on the job's node does not answer; waiting up to 1 s" in capsys.readouterr().err
