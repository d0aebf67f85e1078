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
            deploy._state(None, deploy.ServeTarget(dashboard_url=url, headers={}, serve_host="127.0.0.1", serve_port=8000,
                                                   public_host="127.0.0.1"))
        assert time.monotonic() - t0 < 10
        assert e.value.message == f"Serve's API at {url} did not answer within 1 s."
