"""What the head's supervisor copies of a dead Ray process's log: its last records, without Ray's periodic
dumps (texts as Ray 2.60 writes them, from this suite's runs)."""

from __future__ import annotations

import pytest

from rayfleet.cluster.supervisor import without_dumps

pytestmark = pytest.mark.unit

GCS = """\
[2026-12-04 16:14:04,950 I 21880 21880] (gcs_server) gcs_actor_manager.cc:475: Finished creating actor. Status: OK
[2026-12-04 16:14:05,171 I 21880 21880] (gcs_server) gcs_server.cc:1307: Gcs Debug state:

GcsNodeManager: 
- RegisterNode request count: 1
GcsAutoscalerStateManager: 
- last_seen_autoscaler_state_version_: 0
- pending demands:
[2026-12-04 16:14:05,180 I 21880 21880] (gcs_server) gcs_server.cc:1326: task_io_context Event stats:
Global stats: 12 total (1 active)
Queueing time: mean = 1.2 ms
\tevent_loop_lag_probe - 2 total (0 active), Execution time: mean = 0.01ms
-Total num of actor creation tasks: 7
"""

CRASH = """\
[2026-12-04 16:20:00,000 I 4224 4224] (gcs_server) gcs_server.cc:1326: ray_syncer_io_context Event stats:
\tRaySyncer.Poll - 1 total (0 active), Execution time: mean = 0.01ms
[2026-12-04 16:20:01,000 C 4224 4224] (gcs_server) grpc_server.cc:134: Check failed: server_ Failed to start the grpc server.
*** StackTrace Information ***
/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server(+0x1234) [0x55d1] ray::operator<<()
"""

RAYLET = """\
[2026-12-04 15:42:01,000 W 4563 4601] (raylet) node_manager.cc:1477: Disconnecting worker
[state-dump] \tray::rpc::JobInfoGcsService.grpc_client.GetAllJobInfo.OnReplyReceived - 1 total (0 active)
[state-dump] DebugString() time ms: 0
[state-dump] 
"""


def test_a_debug_state_and_event_stats_dump_are_left_out():
    assert without_dumps(GCS.splitlines()) == [
        "[2026-12-04 16:14:04,950 I 21880 21880] (gcs_server) gcs_actor_manager.cc:475: Finished creating actor. "
        "Status: OK"]


def test_a_crash_and_its_stack_trace_are_kept():
    assert without_dumps(CRASH.splitlines()) == CRASH.splitlines()[2:]


def test_the_raylets_state_dump_lines_are_left_out():
    assert without_dumps(RAYLET.splitlines()) == RAYLET.splitlines()[:1]


def test_lines_that_are_not_ray_records_are_kept():
    text = ["2026-12-04 16:54:21,838\tINFO scripts.py:1043 -- Local node IP: 192.0.2.2", "Traceback (most recent "
            "call last):", "RuntimeError: Failed to start GCS.", ""]
    assert without_dumps(text) == text[:3]
