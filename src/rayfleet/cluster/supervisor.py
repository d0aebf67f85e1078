"""The head's supervisor: runs ``ray start --head``, and runs it again when the head dies.

Ray's GCS fault tolerance keeps a cluster's state (nodes, actors, Serve's applications,
jobs) in a store that outlives the head's processes: RocksDB on the head's disk
(``RAY_gcs_storage=rocksdb``, ``RAY_gcs_storage_path``) or Redis. A head started again on
the same store takes the same session back, and Serve's controller brings back what it
ran, with nothing redeployed. Outside KubeRay, Ray does not restart the head: this
process does.

It is the leader of its own session and runs ``ray start --head`` as its child, so every
Ray process of the head is in that session, restart after restart, and
``processes.cluster_pids`` finds them (``rayfleet down`` stops the supervisor with them).
Every second it checks that the head's GCS server and raylet run; when one is gone
(killed, crashed, OOM) it stops what is left of the head, by PID in its session, and runs
the same ``ray start --head`` again, on the same store. Each restart is recorded
(``restarts`` file: count, reason, time, seconds until Ray was up again) for
``rayfleet status``. A ``ray start`` that fails is tried again with a growing pause; the tries
are one restart (its reason is why the head went down, its seconds run until a try worked), and
each failed try's own output goes to the supervisor's log.

Usage (rayfleet starts it): ``python -m rayfleet.cluster.supervisor SPEC.json``. It writes
one line on stdout when the first start is done (``started`` or ``failed RC``) and closes
it; its own log goes to stderr. On a fleet's head with systemd, the head's unit runs it
(``systemd_unit.py``): then it also tells systemd (READY=1), and, started by systemd again
for a cluster whose record it finds (a reboot, its own death), it starts the head on the store
as after any death.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayfleet.cluster import processes

__all__ = ["HeadSpec", "spawn", "read_restarts", "HEAD_PROCESSES", "ask_to_start"]

HEAD_PROCESSES = ("gcs_server", "raylet")   # /proc/PID/comm of the processes a head can't run without
CHECK_EVERY_S = 1.0
START_TIMEOUT_S = 120
_MAX_PAUSE_S = 60
_HISTORY = 20
_LAST_WORDS = 8   # lines of a dead head process's own log copied into the supervisor's
# Ray's periodic dumps in a component's log say nothing of why it died, and can fill its last lines: a record
# that opens one ("... Gcs Debug state:", "... Event stats:") and the lines up to the next record, and the
# raylet's "[state-dump]" lines, are left out of a dead process's last lines (a crash's record and the stack
# trace after it are kept).
_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d ")
_DUMP_OPENS = re.compile(r"(Debug state|stats):\s*$")


def without_dumps(lines: list[str]) -> list[str]:
    """``lines`` of a Ray component's log without its periodic dumps, nor blank lines."""
    out, dump = [], False
    for line in lines:
        if _RECORD.match(line):
            dump = bool(_DUMP_OPENS.search(line))
        if not (dump or line.startswith("[state-dump]") or not line.strip()):
            out.append(line)
    return out


FIRST_START = "first-start"   # beside the record: the cluster id node_start asks the supervisor to start


@dataclass(frozen=True)
class HeadSpec:
    """What the supervisor runs and where it writes."""

    cluster_id: str
    args: list[str]          # the `ray start --head ...` command line
    log: str                 # ray start's output (overwritten at each start)
    restarts: str            # the restart record (JSON)
    record: str              # the cluster's record: the supervisor ends when it is gone or names another cluster
    gcs_address: str = ""    # host:port of the head's GCS (jobs of the old head are marked failed there)
    env: dict = field(default_factory=dict)   # added to the supervisor's environment for ray start
    monitoring_dir: str = ""  # the cluster's Prometheus dir: its plan (when `up` runs one) is ensured after a start

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "HeadSpec":
        return cls(**json.loads(path.read_text()))


def spawn(spec_path: Path, env: dict[str, str], log: Path, timeout_s: float = START_TIMEOUT_S + 30
          ) -> tuple[int, str]:
    """Start the supervisor of the spec at ``spec_path`` in a new session (it runs ``ray start --head``);
    its PID and the first start's outcome: ``started``, ``failed RC``, or "" (no answer in time)."""
    import select

    ask_to_start(HeadSpec.load(spec_path))
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(spec_path)], env=env,
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    proc.stdout.close()
    return proc.pid, line


def ask_to_start(spec: HeadSpec) -> None:
    """Ask the supervisor of ``spec`` for the cluster's first start (spawn; node_start before systemd
    starts the unit): without this, or a record of the cluster, a supervisor starts nothing."""
    Path(spec.record).with_name(FIRST_START).write_text(spec.cluster_id + "\n")


def read_restarts(path: Path) -> dict:
    """The restart record: {"count": N, "history": [{"time", "reason", "seconds", "ok", "tries"}, ...]} (newest
    last; time: when the head was found down, seconds: until a ray start worked, or the last failed)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"count": 0, "history": []}
    return {"count": int(data.get("count", 0)), "history": list(data.get("history", []))}


HEAD_RESTARTED = "head restarted"


def fail_orphaned_jobs(gcs_address: str, since_s: float, reason: str) -> list[str]:
    """Mark FAILED, with the reason, every Ray Job still PENDING/RUNNING that started before ``since_s``:
    its driver ran on the head and died with it. Ray's own job monitor keeps such a job RUNNING
    forever (its supervisor actor's handle never resolves). Returns the jobs marked."""
    import asyncio

    from ray._raylet import GcsClient
    from ray.dashboard.modules.job.common import JobErrorType, JobInfoStorageClient, JobStatus

    client = JobInfoStorageClient(GcsClient(address=gcs_address))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since_s))
    message = (f"{HEAD_RESTARTED} at {when} ({reason}): the job's driver ran on the head and stopped with it. "
               "Its log stays readable ('rayfleet jobs logs ID'); run it again to redo it.")

    # What Ray's job monitor writes when it gets there first: the same fact without the reason.
    ray_says = {JobErrorType.JOB_SUPERVISOR_ACTOR_START_FAILURE, JobErrorType.JOB_SUPERVISOR_ACTOR_DIED,
                JobErrorType.JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE}

    async def run() -> set[str]:
        marked = set()
        for job_id, info in (await client.get_all_jobs(timeout=30)).items():
            # A job that one of these restarts marked already keeps that reason: its driver stopped with the
            # head then (a second restart soon after, e.g. a raylet that died again, is not its cause).
            if (info.start_time or 0) / 1000 >= since_s or (info.message or "").startswith(HEAD_RESTARTED):
                continue
            orphan = not info.status.is_terminal() or (
                info.status == JobStatus.FAILED and info.error_type in ray_says
                and (info.end_time or 0) / 1000 >= since_s)
            if orphan:
                await client.put_status(job_id, JobStatus.FAILED, message=message,   # FAILED -> FAILED is allowed
                                        error_type=JobErrorType.JOB_SUPERVISOR_ACTOR_DIED, timeout=30)
                marked.add(job_id)
        return marked

    marked = asyncio.run(run())
    time.sleep(10)   # Ray's job monitor starts with the dashboard, and may still write its own message
    return sorted(marked | asyncio.run(run()))


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervisor[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class _Supervisor:
    def __init__(self, spec: HeadSpec):
        self.spec = spec
        self.session = processes.Session.of(os.getpid())
        self.children: list[subprocess.Popen] = []

    def owned(self) -> bool:
        """The cluster's record still names this cluster (`down` removes it: then the supervisor ends)."""
        try:
            return json.loads(Path(self.spec.record).read_text()).get("cluster_id") == self.spec.cluster_id
        except (OSError, ValueError):
            return False

    def asked_to_start(self) -> bool:
        """node_start asked for this cluster's first start (its ``first-start`` file, used up here)."""
        path = Path(self.spec.record).with_name(FIRST_START)
        try:
            asked = path.read_text().strip() == self.spec.cluster_id
        except OSError:
            return False
        path.unlink(missing_ok=True)
        return asked

    def missing(self) -> list[str]:
        running = {_comm(pid) for pid in processes.cluster_pids(self.spec.cluster_id, self.session)}
        return [name for name in HEAD_PROCESSES if name not in running]

    def start(self) -> int | None:
        """``ray start --head``; its exit status (None: timed out)."""
        env = dict(os.environ, **self.spec.env)
        with open(self.spec.log, "w") as log:
            proc = subprocess.Popen(self.spec.args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                return proc.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return None

    def record(self, down_at: float, reason: str, seconds: float, ok: bool, tries: int = 1) -> None:
        """One entry per time the head went down: a later try of the same restart replaces its entry."""
        path = Path(self.spec.restarts)
        data = read_restarts(path)
        entry = {"time": down_at, "reason": reason, "seconds": round(seconds, 1), "ok": ok, "tries": tries}
        if tries > 1 and data["history"] and data["history"][-1]["time"] == down_at:
            data["history"][-1] = entry
        else:
            data["count"] += 1
            data["history"] = (data["history"] + [entry])[-_HISTORY:]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    def _tail(self, path: Path) -> str:
        """The last lines of a log (Ray's dumps left out), indented, for the supervisor's log; OSError if unread."""
        lines = without_dumps(path.read_text(errors="replace")[-256_000:].splitlines())[-_LAST_WORDS:]
        return "".join(f"\n  {ln[:400]}" for ln in lines)

    def last_words(self, names: list[str]) -> None:
        """Into the supervisor's log: the last lines that the dead processes wrote in the head's Ray
        session (why a raylet exits is in its own log: the GCS marked it dead, an agent it fate-shares
        with failed, a check failed)."""
        args = self.spec.args
        temp = next((a.split("=", 1)[1] for a in args if a.startswith("--temp-dir=")), None)
        if temp is None and "--temp-dir" in args[:-1]:
            temp = args[args.index("--temp-dir") + 1]
        if temp is None:
            return
        logs = Path(temp) / "session_latest" / "logs"
        for name in names:
            for file in (f"{name}.out", f"{name}.err"):   # (.err: what it wrote outside its log, e.g. a check failed)
                try:
                    if tail := self._tail(logs / file):
                        _log(f"the last lines of {file}:{tail}")
                except OSError:
                    continue

    def restart(self, reason: str, down_at: float, died: list[str] = (), tries: int = 1) -> bool:
        """Stop what is left of the head and start it again: the ``tries``-th try since it went down at
        ``down_at`` for ``reason`` (what died in a failed try before is not a new reason)."""
        _log(f"head down ({reason}): stopping what is left of it, then starting it again"
             + (f" (try {tries})" if tries > 1 else ""))
        self.last_words(list(died))
        left = processes.terminate(self.spec.cluster_id, self.session, grace_s=1.0)
        if left:
            _log(f"processes still alive after SIGKILL: {left}")
        t0 = time.monotonic()
        rc = self.start()
        ok = rc == 0 and not self.missing()
        self.record(down_at, reason, time.time() - down_at, ok, tries)
        _log(f"ray start --head {'done' if ok else f'failed (exit {rc})'} after {time.monotonic() - t0:.1f} s"
             + ("" if ok else self._start_output()))
        if ok and self.spec.gcs_address:
            self.fail_jobs(down_at, reason)
        if ok:
            self.ensure_monitoring()
        return ok

    def _start_output(self) -> str:
        try:
            return f"; its last lines ({self.spec.log}):{self._tail(Path(self.spec.log))}"
        except OSError:
            return f"; see {self.spec.log}"

    def ensure_monitoring(self) -> None:
        """The cluster's Prometheus, when `rayfleet up` runs one (its plan in the monitoring dir): started again
        if it is gone, as after a reboot. In a process of its own, which exits: Prometheus is not this
        supervisor's child (nothing here would reap it), and the head is watched again without delay after."""
        from rayfleet.cluster.monitoring import PLAN_FILE

        plan = Path(self.spec.monitoring_dir) / PLAN_FILE if self.spec.monitoring_dir else None
        if plan is None or not plan.is_file():
            return
        cmd = [sys.executable, "-m", "rayfleet.cluster.monitoring", "ensure", plan.read_text()]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            _log(f"Prometheus: {(r.stdout or r.stderr).strip() or f'exit {r.returncode}'}")
        except (OSError, subprocess.TimeoutExpired) as e:
            _log(f"Prometheus not ensured: {e}")

    def fail_jobs(self, since_s: float, reason: str) -> None:
        """Jobs of the old head: FAILED with the reason (in a short-lived process: the supervisor stays small)."""
        cmd = [sys.executable, "-m", "rayfleet.cluster.supervisor", "--fail-jobs", self.spec.gcs_address,
               str(since_s), reason]
        # Its output goes to the supervisor's log; it is not waited for (the head is watched meanwhile).
        self.children.append(subprocess.Popen(cmd, env=dict(os.environ, **self.spec.env), stdin=subprocess.DEVNULL))

    def run(self, outage: tuple[float, str, int] | None = None) -> int:
        """Watch the head until `down` removes the cluster's record. ``outage``: (down at, why, tries so far) of a
        restart whose tries failed so far: the next try goes on with it."""
        deadline = time.monotonic() + START_TIMEOUT_S   # rayfleet writes the record once Ray has started
        while not self.owned() and time.monotonic() < deadline:
            time.sleep(0.2)
        pause = 2.0
        while self.owned():
            time.sleep(CHECK_EVERY_S)
            self.children = [c for c in self.children if c.poll() is None]
            missing = self.missing()
            if not missing or not self.owned():
                continue
            now = time.time()
            time.sleep(0.5)   # `down` stopping the head at this moment removes the record first
            if not self.owned():
                break
            down_at, reason, tries = outage or (now, ", ".join(f"{name} died" for name in missing), 0)
            if self.restart(reason, down_at, missing, tries + 1):
                pause, outage = 2.0, None
            else:
                outage = (down_at, reason, tries + 1)
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)
        _log("the cluster's record is gone (rayfleet down): exiting")
        return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--fail-jobs"] and len(argv) == 4:
        marked = fail_orphaned_jobs(argv[1], float(argv[2]), argv[3])
        _log(f"jobs of the old head marked failed: {', '.join(marked) or 'none'}")
        return 0
    if len(argv) != 1:
        print("usage: python -m rayfleet.cluster.supervisor SPEC.json", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    notify = _systemd_notifier()
    sup = _Supervisor(HeadSpec.load(Path(argv[0])))
    if sup.owned():
        # The record names this cluster already: not `rayfleet up`'s first start but systemd starting the
        # supervisor again (the machine booted, or the supervisor died and took the head with it). The head
        # starts again on its store, as after any death; a failed start is retried by run().
        down_at, reason = time.time(), _why_started_again(Path(sup.spec.record))
        ok = sup.restart(reason, down_at)
        notify("READY=1")
        return sup.run(None if ok else (down_at, reason, 1))
    if not sup.asked_to_start():
        # No record, and not asked by node_start: `rayfleet down` took this cluster down, and its unit (if
        # down could not remove it) must not start it again at boot.
        _log("no record of this cluster and no start asked for: nothing to do")
        notify("READY=1")   # then a clean exit: systemd does not start it again
        return 0
    rc = sup.start()
    ok = rc == 0 and not sup.missing()
    sys.stdout.write("started\n" if ok else f"failed {rc}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    if not ok:
        return 1
    notify("READY=1")
    return sup.run()


def _systemd_notifier():
    """sd_notify for this supervisor when systemd runs it (the head's unit, systemd_unit.py); Ray's
    processes must not inherit systemd's socket."""
    from rayfleet.cluster import systemd_unit

    socket_path = os.environ.pop("NOTIFY_SOCKET", "")
    return lambda message: systemd_unit.notify(socket_path, message)


def _why_started_again(record: Path) -> str:
    """The reason of a start by systemd: the machine booted since the head was started, or not."""
    try:
        booted = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                      if ln.startswith("btime "))
        if booted > record.stat().st_mtime:
            return "the machine started again"
    except (OSError, StopIteration, ValueError):
        pass
    return "its supervisor was started again by systemd"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
