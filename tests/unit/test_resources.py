"""What a job needs against what the cluster has: refused before submit, waiting lines,
and a stall guard that stops a job whose demand can't be placed (fake clock, no Ray)."""

from __future__ import annotations

import pytest

from rayfleet.errors import JobError
from rayfleet.jobs.resources import RAY_DATA_STARVED, Demand, StallGuard, Usage, check_fits, waiting_line

pytestmark = pytest.mark.unit


def usage(*nodes: tuple[float, float], pending: tuple = ()) -> Usage:
    """Nodes as (used, total) CPUs; ``pending``: Ray's waiting demands as (bundles, count)."""
    node_list = [{"CPU": n} for n in nodes]
    return Usage(cluster={"CPU": (sum(u for u, _ in nodes), sum(t for _, t in nodes))}, nodes=node_list,
                 pending=pending)


WORKER_GROUP = (({"CPU": 1.0}, {"CPU": 1.0}), 1)   # a pending placement group of 2 x 1 CPU


def test_a_job_bigger_than_the_cluster_is_refused_with_the_fix():
    with pytest.raises(JobError) as e:
        check_fits(Demand("training job tiny (3 worker(s))", 3, 1.0), usage((1, 2)), fix="--num-workers 2")
    assert e.value.message == ("The training job tiny (3 worker(s)) needs 3 CPUs (3 × 1) at once; the cluster "
                               "has 2 CPUs, so it could never start.")
    assert e.value.hint == ("Ask for less (--num-workers 2), or give the cluster more: 'rayfleet down --local && "
                            "rayfleet up --local --num-cpus 3' on this machine, or add a node to the fleet.")


def test_a_worker_bigger_than_any_node_is_refused_even_when_the_total_is_enough():
    with pytest.raises(JobError, match=r"needs 4 CPUs \(1 × 4\) at once; the cluster has 4 CPUs on 2 nodes "
                                       r"\(the largest has 2 CPUs\)"):
        check_fits(Demand("job", 1, 4.0), usage((0, 2), (0, 2)), fix="x")
    check_fits(Demand("job", 2, 2.0), usage((2, 2), (2, 2)), fix="x")  # busy but placeable: no error


def test_waiting_line_names_what_is_free_and_who_holds_it():
    line = waiting_line(Demand("job", 2, 1.0), usage((1, 2)), ["service translator (1 replica(s))"])
    assert line == ("waiting for resources: needs 2 CPUs, free 1 of 2 CPUs "
                    "(held by: service translator (1 replica(s)))")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_guard_reports_waiting_only_once_placing_and_only_when_it_lasts():
    clock, now = Clock(), {"u": usage((1, 2), pending=(WORKER_GROUP,))}
    guard = StallGuard(Demand("job", 2, 1.0), lambda: now["u"], lambda: ["job other (train)"], clock=clock,
                       check_every_s=5, repeat_s=30)
    assert guard.tick() is None               # not asking for workers yet (data preparation)
    guard.placing = True
    clock.t = 10
    assert guard.tick() is None               # blocked for the first time: give it a moment
    clock.t = 15
    assert guard.tick() == ("waiting for resources: needs 2 CPUs, free 1 of 2 CPUs "
                            "(held by: job other (train))")
    clock.t = 20
    assert guard.tick() is None               # same line: not again before repeat_s
    clock.t = 46
    assert guard.tick() is not None           # ... but again after it
    now["u"] = usage((0, 2))
    clock.t = 60
    assert guard.tick() is None               # freed
    guard.progressed(started=True)
    now["u"] = usage((2, 2))
    clock.t = 70
    assert guard.tick() is None               # running jobs don't wait


def test_guard_is_silent_while_the_jobs_own_placed_workers_start():
    # 1 CPU held by a service, 1 by the job's worker, which is placed but has not reported yet:
    # the free CPUs can't hold the demand, yet Ray has nothing pending, so nothing waits.
    clock = Clock()
    guard = StallGuard(Demand("job", 1, 1.0), lambda: usage((2, 2)), lambda: ["service translator"], clock=clock,
                       check_every_s=5)
    guard.placing = True
    for clock.t in (5, 10, 15, 60):
        assert guard.tick() is None


def test_guard_stops_a_job_whose_demand_became_unplaceable():
    clock, now = Clock(), {"u": usage((0, 1))}   # a node was lost: 1 CPU left for 2 workers
    guard = StallGuard(Demand("training job tiny", 2, 1.0), lambda: now["u"], lambda: [], clock=clock,
                       timeout_s=120, check_every_s=5)
    guard.placing = True
    clock.t = 5
    guard.tick()
    clock.t = 100
    guard.tick()
    clock.t = 126
    with pytest.raises(JobError, match=r"^The training job tiny made no progress for 120 s and can't be placed: "
                                       r"it needs 2 CPUs and the cluster has 1 now\.$"):
        guard.tick()


def test_guard_stops_a_job_starved_by_ray_data_unless_it_progresses():
    clock = Clock()
    guard = StallGuard(Demand("job", 1, 1.0), lambda: usage((1, 1)), lambda: [], clock=clock, timeout_s=120)
    guard.progressed(started=True)
    guard.log_line(f"(SplitCoordinator pid=1) {RAY_DATA_STARVED} from TaskPoolMapOperator[ReadText].")
    clock.t = 100
    guard.tick()
    guard.progressed()                         # progress resets the clock and the reason
    clock.t = 300
    assert guard.tick() is None
    guard.log_line(RAY_DATA_STARVED)
    clock.t = 421
    with pytest.raises(JobError, match="Ray Data's tasks can't get a CPU"):
        guard.tick()


def test_pending_watch_says_what_rays_tasks_wait_for_and_stops_the_unplaceable():
    from rayfleet.jobs.resources import PendingWatch, Usage

    clock = [0.0]
    node = {"CPU": (1.5, 2.0), "memory": (0.0, 1e9)}
    group = (({"CPU": 1.0},) * 2, 1)             # a Ray Train worker group of 2 x 1 CPU
    usage = [Usage({"CPU": (1.5, 2.0)}, [node], (group,))]
    w = PendingWatch(lambda: usage[0], lambda: ["service translator (1 replica(s))"], timeout_s=60,
                     clock=lambda: clock[0])
    assert w.tick() is None                      # blocked for less than 5 s: no line yet
    clock[0] = 5
    assert w.tick() == ("waiting for resources: Ray's tasks and actors wait for a group of 2 × (1 CPU), free 0.5 "
                        "of 2 CPUs (held by: service translator (1 replica(s)))")
    clock[0] = 10
    assert w.tick() is None                      # the same line is repeated only every 30 s
    usage[0] = Usage({"CPU": (0.0, 2.0)}, [{"CPU": (0.0, 2.0)}], (group,))
    clock[0] = 15
    assert w.tick() is None                      # fits the free CPUs now (Ray is about to place it)
    usage[0] = Usage({"CPU": (0.0, 2.0)}, [{"CPU": (0.0, 2.0)}], ((({"CPU": 1.0},) * 3, 1),))
    clock[0] = 20
    assert w.tick() is None
    clock[0] = 25
    assert w.tick().endswith("; the cluster's nodes don't have that much")
    clock[0] = 70
    w.progressed()                               # a log line resets the clock
    clock[0] = 125
    w.tick()                                     # 55 s since that line: not stopped yet
    clock[0] = 131
    with pytest.raises(JobError, match=r"can't be placed: Ray waits for a group of 3 × \(1 CPU\), more than the "
                                       r"cluster's nodes have \(1 node\(s\), the largest with 2 CPU\)"):
        w.tick()
