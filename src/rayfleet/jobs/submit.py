"""Ray Jobs through the dashboard's Jobs API, with the cluster's auth token.

``JobsClient`` wraps Ray's ``JobSubmissionClient``; every Ray or HTTP error is
turned into ``JobError`` naming the job and the step. ``follow`` tails the job's
log (only new text comes) and yields its lines until the job ends (Ctrl-C in the
caller stops the following, never the job).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from rayfleet.errors import JobError, RayfleetError, foreign

__all__ = ["JobsClient", "JobInfo", "JobOutcome", "follow_events", "TERMINAL"]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class JobInfo:
    id: str
    status: str
    entrypoint: str
    kind: str
    name: str
    start_ms: int
    end_ms: int
    message: str


def quiet_ray_logs() -> None:
    """Ray's client-side INFO lines (packaging, uploads, websocket closes) are not the user's business."""
    from rayfleet._compat.ray import quiet_sdk_loggers

    quiet_sdk_loggers()


RECONNECT_S = 120   # how long a follower waits for a Jobs API that stopped answering (the head restarting)
ENDED_LOG_WAIT_S = 30   # how long it waits for the log of a job that has ended (its node's job agent restarting)
_REASON_WAIT_S = 15
_RAY_LOST_SUPERVISOR = ("Unexpected error occurred: failed to get job supervisor", "Job supervisor actor died")


def _unreachable(e: BaseException) -> bool:
    """The Jobs API did not answer at all (connection refused/reset), as opposed to an answer that is an error."""
    import requests

    text = str(e)
    return isinstance(e, (requests.ConnectionError, ConnectionError)) or any(
        s in text for s in ("Connection refused", "Failed to establish a new connection", "Connection reset",
                            "RemoteDisconnected",
                            "Connect call failed"))   # a 500 from the head: the node's job agent is not back yet


def _first_line(e: BaseException) -> str:
    """An error's gist: the last line of a server's traceback names the cause."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


LIST_TIMEOUT_S = 30


class JobsClient:
    """Submit, list, read, follow and stop Ray Jobs on one cluster."""

    def __init__(self, dashboard_url: str, headers: dict[str, str]):
        from ray.job_submission import JobSubmissionClient

        quiet_ray_logs()
        self.dashboard_url = dashboard_url
        self.headers = dict(headers)
        with foreign(JobError, f"Can't reach the Ray Jobs API at {dashboard_url}"):
            self._client = JobSubmissionClient(address=dashboard_url, headers=dict(headers))

    def submit(self, entrypoint: str, *, submission_id: str, metadata: dict[str, str] | None = None,
               runtime_env: dict[str, Any] | None = None, entrypoint_num_cpus: float = 0,
               entrypoint_num_gpus: float = 0, entrypoint_resources: dict[str, float] | None = None) -> str:
        with foreign(JobError, f"Submitting job {submission_id} failed"):
            return self._client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                           metadata=metadata or {}, runtime_env=runtime_env or {},
                                           entrypoint_num_cpus=entrypoint_num_cpus,
                                           entrypoint_num_gpus=entrypoint_num_gpus or None,
                                           entrypoint_resources=entrypoint_resources)

    def usage(self):
        """What the cluster has and uses now (``rayfleet.jobs.resources.Usage``)."""
        from rayfleet.jobs.resources import cluster_usage

        return cluster_usage(self.dashboard_url, self.headers)

    def _info(self, d) -> JobInfo:
        meta = d.metadata or {}
        return JobInfo(id=d.submission_id or d.job_id or "?", status=str(d.status.value if hasattr(d.status, "value")
                                                                           else d.status),
                       entrypoint=d.entrypoint or "", kind=meta.get("rayfleet.kind", "-"),
                       name=meta.get("rayfleet.name", "-"), start_ms=int(d.start_time or 0),
                       end_ms=int(d.end_time or 0), message=d.message or "")

    def list(self, timeout_s: float = LIST_TIMEOUT_S) -> list[JobInfo]:
        """Every job. Ray's client waits for an answer without end, and a dashboard that has just started
        again (a restarted head) has been seen to take minutes: JobError after ``timeout_s``."""
        from ray.job_submission import JobDetails

        from rayfleet.cluster.dashboard import get_json

        with foreign(JobError, f"Can't list jobs at {self.dashboard_url}"):
            raw = get_json(self.dashboard_url, "/api/jobs/", self.headers, timeout_s, JobError, "The Jobs API")
            jobs = [JobDetails(**j) for j in raw]
        return sorted((self._info(j) for j in jobs if j.submission_id), key=lambda j: j.start_ms)

    def info(self, job_id: str, *, wait_s: float = 0.0) -> JobInfo:
        """The job's state. ``wait_s``: how long to keep trying while the Jobs API does not answer at all
        (a supervised head being started again), saying so once on stderr."""
        try:
            return self._info(self._unreachable_retried(lambda: self._client.get_job_info(job_id), wait_s))
        except Exception as e:
            if "does not exist" in str(e) or "404" in str(e):
                raise JobError(f"No job {job_id!r} on this cluster.", hint="List jobs with: rayfleet jobs") from None
            raise JobError(f"Can't read job {job_id}: {e}") from e

    def _unreachable_retried(self, call: Callable[[], Any], wait_s: float):
        deadline = None
        while True:
            try:
                return call()
            except Exception as e:
                if not wait_s or not _unreachable(e):
                    raise
                if deadline is None:
                    deadline = time.monotonic() + wait_s
                    what = ("The job agent on the job's node" if "Connect call failed" in str(e)
                            else f"The cluster's Jobs API at {self.dashboard_url}")
                    print(f"{what} does not answer; waiting up to {wait_s:.0f} s for it (a supervised head is "
                          "started again by itself) ...", file=sys.stderr, flush=True)
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def final_info(self, job_id: str) -> JobInfo:
        """The state of a job that has ended. When Ray says only that the job's supervisor actor is gone, the
        head's supervisor may be about to write why (the head restarted): wait a few seconds for it."""
        info = self.info(job_id, wait_s=RECONNECT_S)
        deadline = time.monotonic() + _REASON_WAIT_S
        while info.message.startswith(_RAY_LOST_SUPERVISOR) and time.monotonic() < deadline:
            time.sleep(1)
            info = self.info(job_id, wait_s=RECONNECT_S)
        return info

    def logs(self, job_id: str) -> str:
        self.info(job_id)
        with foreign(JobError, f"Can't read the logs of job {job_id}"):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; True if it was running."""
        self.info(job_id)
        with foreign(JobError, f"Can't stop job {job_id}"):
            return bool(self._client.stop_job(job_id))

    def follow(self, job_id: str, *, poll_s: float = 0.5,
               on_poll: Callable[[], None] | None = None) -> Iterator[str]:
        """Yield the job's log lines as they are written, until the job has ended and its log is read.

        The log comes from Ray's log tail (a websocket that sends only new text), read in a
        thread; should it break, the log is read over HTTP from where the tail stopped.
        ``on_poll`` is called about every ``poll_s`` between the lines (heartbeats, waiting checks).
        """
        tail = _Tail(self._client, job_id)
        partial, received = "", 0
        last_poll = float("-inf")
        try:
            while True:
                if on_poll is not None and time.monotonic() - last_poll >= poll_s:
                    last_poll = time.monotonic()
                    on_poll()
                item = tail.get(timeout=poll_s)
                if item is None:
                    continue
                kind, text = item
                if kind == "text":
                    received += len(text)
                    lines = (partial + text).split("\n")
                    partial = lines.pop()
                    yield from lines
                elif kind == "end" and self.info(job_id, wait_s=RECONNECT_S).status in TERMINAL:
                    # The tail has been seen to close before its last lines reached us: read them over HTTP.
                    yield from self._poll_logs(job_id, received, partial, poll_s, on_poll, ended=True)
                    return
                else:  # the tail broke (or ended early): read the rest over HTTP
                    yield from self._poll_logs(job_id, received, partial, poll_s, on_poll)
                    return
        finally:
            tail.close()

    def _poll_logs(self, job_id: str, seen: int, partial: str, poll_s: float,
                   on_poll: Callable[[], None] | None, *, ended: bool = False) -> Iterator[str]:
        """The log from character ``seen`` on, by reading it whole at every poll (the fallback; ``ended``: the
        job is known to have ended, one read). The log of a job that has ended but cannot be read (its node's
        job agent gone with a restarted head) ends with a line that says so, not with an error."""
        while True:
            if on_poll is not None and not ended:
                on_poll()
            ended = ended or self.info(job_id, wait_s=RECONNECT_S).status in TERMINAL
            try:
                text = self._unreachable_retried(lambda: self._client.get_job_logs(job_id),
                                                 ENDED_LOG_WAIT_S if ended else RECONNECT_S)
            except Exception as e:
                if not ended:
                    raise JobError(f"Can't read the logs of job {job_id}: {e}") from e
                yield from ([partial] if partial else [])
                yield (f"(rayfleet: the end of this job's log could not be read: {_first_line(e)}; "
                       f"try later: rayfleet jobs logs {job_id})")
                return
            if len(text) < seen:  # log rotated or truncated: start over (or, at the end, add nothing)
                seen = len(text) if ended else 0
            chunk, seen = partial + text[seen:], len(text)
            lines = chunk.split("\n")
            partial = lines.pop()
            yield from lines
            if ended:
                if partial:
                    yield partial
                return
            time.sleep(poll_s)

    def wait(self, job_id: str, *, timeout_s: float, poll_s: float = 1.0) -> JobInfo:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info(job_id)
            if info.status in TERMINAL:
                return info
            if time.monotonic() > deadline:
                raise JobError(f"Job {job_id} is still {info.status} after {timeout_s:.0f} s.")
            time.sleep(poll_s)


class _Tail:
    """Ray's ``tail_job_logs`` (async) run in a daemon thread; its chunks in a queue:
    ``("text", chunk)``, then ``("end", None)`` or ``("error", exc)``."""

    def __init__(self, client, job_id: str):
        import asyncio
        import queue
        import threading

        self._queue: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self._empty = queue.Empty
        self._loop = asyncio.new_event_loop()
        self._task = None

        async def tail() -> None:
            async for chunk in client.tail_job_logs(job_id):
                self._queue.put(("text", chunk))

        def run() -> None:
            try:
                self._task = self._loop.create_task(tail())
                self._loop.run_until_complete(self._task)
                self._queue.put(("end", None))
            except BaseException as e:  # noqa: BLE001 - reported to the reader, which falls back
                self._queue.put(("error", e))
            finally:
                self._loop.close()

        threading.Thread(target=run, daemon=True, name=f"rayfleet-tail-{job_id}").start()

    def get(self, timeout: float):
        try:
            return self._queue.get(timeout=timeout)
        except self._empty:
            return None

    def close(self) -> None:
        """Stop tailing (a follower that stops early must not leave the websocket open)."""
        task, loop = self._task, self._loop
        if task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass


@dataclass(frozen=True)
class JobOutcome:
    """How a followed job ended: its final info, its ``result`` and ``error`` events, the last other log lines."""

    info: JobInfo
    result: Any | None              # the protocol's result event (events.TrainResult, events.BulkResult)
    error: Any | None               # events.Error
    tail: list[str]

    @property
    def succeeded(self) -> bool:
        return self.result is not None and self.info.status == "SUCCEEDED"

    def context(self) -> str | None:
        return "\n".join(self.tail[-10:]) or None

    def result_or_raise(self, error: type[RayfleetError], *, resume: str = "") -> Any:
        """The result event of a job that succeeded; else ``error`` with the job's own message and hint
        (its error event), or how it ended and where its log is (``resume``: what to do next)."""
        if self.succeeded:
            return self.result
        job_id = self.info.id
        if self.error is not None:
            raise error(self.error.message, hint=self.error.hint, context=self.context())
        raise error(f"Job {job_id} ended {self.info.status}: {self.info.message or 'no result'}",
                    hint=f"See the log with: rayfleet jobs logs {job_id}.{' ' + resume if resume else ''}",
                    context=self.context())


def follow_events(client: JobsClient, job_id: str, protocol: Any, *, on_event: Callable[[Any], None] | None = None,
                  poll_s: float = 0.5, on_poll: Callable[[], None] | None = None,
                  on_log: Callable[[str], None] | None = None) -> JobOutcome:
    """Follow the job's log to its end, passing each event of ``protocol`` (``rayfleet.jobs.events``) to
    ``on_event``, every other log line to ``on_log``, and calling ``on_poll`` once per poll."""
    from rayfleet.jobs import events

    result = error = None
    tail: list[str] = []
    for line in client.follow(job_id, poll_s=poll_s, on_poll=on_poll):
        ev = events.parse(line, protocol)
        if ev is None:
            tail = (tail + [line])[-20:]
            if on_log is not None:
                on_log(line)
            continue
        if on_event is not None:
            on_event(ev)
        if ev.event == "result":
            result = ev
        elif ev.event == "error":
            error = ev
    return JobOutcome(client.final_info(job_id), result, error, tail)
