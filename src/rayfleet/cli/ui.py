"""``rayfleet ui``: MLflow's own UI (``mlflow server``) on the cluster's model registry, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from rayfleet.cli._common import FLEET_OPTION, console
from rayfleet.errors import ClusterError

__all__ = ["register"]


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _hold(path: Path):
    """An exclusive lock on ``path`` for as long as this process runs, or None when another process holds it:
    two `rayfleet ui` on one port must not both pass the port check while the first one's server starts
    (the second would then print the first one's URL as its own)."""
    import fcntl

    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def ui(fleet_file: Optional[Path] = FLEET_OPTION,
       registry: Optional[str] = typer.Option(None, "--registry", help="Registry URI (default: the cluster's, as "
                                                                       "'rayfleet models' uses it)."),
       port: int = typer.Option(5000, "--port", min=1, max=65535, help="Local port of the UI."),
       start_timeout: float = typer.Option(120, "--start-timeout", help="Seconds to wait for the UI to answer.")
       ) -> None:
    """Start MLflow's UI on the model registry (runs with their loss and evaluation curves, registered models
    and aliases), on 127.0.0.1 only, and print its URL; it runs until Ctrl-C. The registry is the one
    'rayfleet models' reads (the local cluster's, a fleet's storage.path or its database, or --registry).

    Example: rayfleet ui    |    rayfleet ui -f fleet.yaml --port 5050
    """
    from rayfleet.cli.train import _registry

    reg = _registry(registry, fleet_file)
    reg.check()
    from rayfleet.cluster.local import _port_in_use
    from rayfleet.cluster.state import state_dir

    log = state_dir() / "logs" / f"mlflow-ui-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    held = _hold(log.with_suffix(".lock"))   # held until this process ends
    if held is None:
        raise ClusterError(f"'rayfleet ui' on port {port} is already running (or starting) here.",
                           hint="Open its URL, or start another on another --port.")
    if _port_in_use("127.0.0.1", port):
        raise ClusterError(f"Port {port} on 127.0.0.1 is taken.", hint="Choose another with --port.")
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", reg.uri, "--registry-store-uri", reg.uri,
           "--default-artifact-root", reg.artifact_root, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        deadline = time.monotonic() + start_timeout
        while not _answers(url):
            if proc.poll() is not None:
                out = log.read_text(errors="replace").strip().splitlines()
                raise ClusterError(f"MLflow's UI did not start: {out[-1] if out else f'exit {proc.returncode}'}",
                                   hint=f"Its log: {log}")
            if time.monotonic() > deadline or stop["now"]:
                raise ClusterError(f"MLflow's UI did not answer at {url} within {start_timeout:.0f} s.",
                                   hint="Try again with a longer --start-timeout.")
            time.sleep(0.5)
        print(url, flush=True)
        console.print(f"(MLflow's UI on the registry {reg!r}; Ctrl-C stops it)", markup=False)
        while not stop["now"] and proc.poll() is None:
            time.sleep(0.5)
        if proc.poll() is not None and not stop["now"]:
            raise ClusterError(f"MLflow's UI stopped (exit {proc.returncode}).", hint=f"Its log: {log}")
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)   # its own session: the server and its workers
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def register(app: typer.Typer) -> None:
    app.command()(ui)
