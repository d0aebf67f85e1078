"""Shared fixtures: a tiny local model, one real local Ray cluster per session,
and the translator deployed on it.

The session cluster uses its own RAYFLEET_HOME and ports below the kernel's
ephemeral range, so it never meets a user's cluster (./run) on the defaults.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Nothing in the tests may touch the user's ~/.rayfleet.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="rf-test-", dir="/tmp"))
os.environ["RAYFLEET_HOME"] = str(_SESSION_HOME / "home")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"   # (git-ignored) what a test leaves for people to look at

# Port sets: gcs, dashboard, serve, client, agent, worker range, Serve replica range
# (HTTP + gRPC; ports stay quarantined ~150 s after a replica stops, so 100 each); all
# below the kernel's ephemeral range (32768). RAYFLEET_TEST_PORT_BASE moves them all, so
# two test runs can share a machine (base 23000 uses 23790-26199; 26000 and 29000 fit too).
_BASE = int(os.environ.get("RAYFLEET_TEST_PORT_BASE", "23000"))


def _ports(offset: int) -> dict[str, int]:
    b = _BASE + offset
    return dict(gcs=b, dashboard=b + 1, serve=b + 2, client_server=b + 3, dashboard_agent=b + 4,
                min_worker=b + 10, max_worker=b + 209, min_replica=b + 210, max_replica=b + 409)


SESSION_PORTS = _ports(790)
OTHER_PORTS = _ports(1790)
E2E_PORTS = _ports(2790)


def up_flags(p: dict) -> list[str]:
    """The 'rayfleet up --local' flags for a port set."""
    return ["--port", str(p["gcs"]), "--dashboard-port", str(p["dashboard"]),
            "--serve-port", str(p["serve"]), "--client-port", str(p["client_server"]),
            "--agent-port", str(p["dashboard_agent"]), "--min-worker-port", str(p["min_worker"]),
            "--max-worker-port", str(p["max_worker"]), "--min-replica-port", str(p["min_replica"]),
            "--max-replica-port", str(p["max_replica"])]


def rayfleet_cli(*args: str, env: dict | None = None, timeout: float = 600,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed 'rayfleet' command in a subprocess."""
    exe = Path(sys.executable).parent / "rayfleet"
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    return subprocess.run([str(exe), *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from rayfleet.testing.tiny_model import build_tiny_marian

    return build_tiny_marian(_SESSION_HOME / "tiny-marian", seed=0)


@pytest.fixture(scope="session")
def short_model() -> Path:
    """A model of another shape than ``tiny_model``: 24 positions, a generation config with
    max_length 20, random weights that never emit </s> (every output runs to the cap)."""
    from rayfleet.testing.tiny_model import build_tiny_marian

    return build_tiny_marian(_SESSION_HOME / "short-marian", seed=3, max_positions=24, generation_max_length=20,
                             d_model=16, train=False, never_eos=True)


@pytest.fixture(scope="session")
def local_cluster():
    """A real single-node Ray cluster started through rayfleet (token auth on).

    5 logical CPUs: the translator replica (1) stays deployed for the whole session,
    and a training or tuning job needs 2 workers + 1 for Ray Data + the trial's 0.01.
    """
    from rayfleet.cluster import local
    from rayfleet.cluster.state import LocalPorts

    result = local.start(ports=LocalPorts(**SESSION_PORTS), num_cpus=5)
    try:
        yield result.cluster
    finally:
        local.stop()


@pytest.fixture(scope="session")
def serve_target(local_cluster):
    from rayfleet.cluster.target import target_for

    return target_for(local_cluster)


@pytest.fixture(scope="session")
def translator(serve_target, tiny_model):
    """The translator (tiny model) deployed at route /, with small limits for the tests."""
    from rayfleet.config.service import ServiceSpec
    from rayfleet.serve.deploy import deploy, delete_service

    spec = ServiceSpec(
        name="translator", route_prefix="/", model=str(tiny_model), version="tiny-v1", backend="transformers",
        batching={"max_batch_size": 16, "batch_wait_timeout_s": 0.05},
        limits={"max_chars": 200, "max_texts": 8, "max_body_bytes": 4096},
        generation={"max_new_tokens": 32},
    )
    status = deploy(serve_target, spec, [], timeout_s=300)
    try:
        yield spec, status.url
    finally:
        delete_service(serve_target, spec.name, wait=False)


PROMETHEUS_PORT = _BASE + 780   # below the session cluster's ports


@pytest.fixture(scope="session")
def prometheus(local_cluster):
    """`rayfleet up --local --monitoring` on the running session cluster: Prometheus added, nothing else
    changed; it runs from the first module that asks until the session ends (it then sees the training runs
    of the modules after it)."""
    import dataclasses

    from rayfleet.cluster import local
    from rayfleet.cluster import monitoring as prom
    from rayfleet.cluster.state import save_local_cluster

    before = local.pids(local_cluster)
    r = rayfleet_cli("up", "--local", "--monitoring", "--prometheus-port", str(PROMETHEUS_PORT),
                     *up_flags(SESSION_PORTS))
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Cluster already running." in r.stdout
        assert f"  prometheus: http://127.0.0.1:{PROMETHEUS_PORT} (keeps 7d)\n" in r.stdout, r.stdout
        assert local.pids(local_cluster) == before   # Ray untouched
        yield f"http://127.0.0.1:{PROMETHEUS_PORT}"
    finally:
        prom.stop(local.monitoring_dir())
        save_local_cluster(dataclasses.replace(local.current(), prometheus_port=0))


# The order the suite runs in: the quick unit tests first; then the modules that start their own
# clusters and hosts (e2e, multihost) while nothing else runs; the integration modules last, because
# the session cluster (its translator, its Prometheus) stays up from the first module that uses it
# until the session ends: under the multi-host lab, that idle cluster cost ~4 min of a 2-core machine.
_ORDER = ("unit", "e2e", "multihost", "integration")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        kind = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
        return _ORDER.index(kind) if kind in _ORDER else len(_ORDER)

    items.sort(key=rank)   # stable: the order within a directory is pytest's


def pytest_sessionfinish(session, exitstatus):
    # An interrupted run may skip fixture teardown: stop the session cluster before
    # its record (in _SESSION_HOME) is removed, or its processes would be orphaned.
    try:
        from rayfleet.cluster import local

        local.stop()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
