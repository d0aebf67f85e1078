"""An on-prem cluster from fleet.yaml: up, down, status — through Ray's cluster launcher.

State per fleet, under ``$RAYFLEET_HOME/fleets/<name>/``: ``auth_token`` (0600),
``known_hosts`` (SSH host keys, pinned at first contact: hostkeys.py), ``ray-cluster.yaml`` (the rendered
launcher config), ``ray-tmp/`` (the launcher's local state), ``up.log``/``down.log``.

``up`` starts Ray on the workers itself as soon as ``ray up`` has the head up, with the
launcher's own worker commands, instead of waiting for the v1 autoscaler to launch them
(only when the autoscaler would start all of them anyway: no autoscaling, no user
setup_commands); the autoscaler's updater then adopts them without a restart
(launcher.py, the one-shot mark). Measured in benchmarks/README.md.

Contract: ``up`` is idempotent (an unchanged fleet is left as it is; a changed
fleet.yaml is applied); ``down`` stops Ray on every node, removes the launcher's
state on both sides, and verifies that no Ray process is left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rayfleet._compat.ray import SESSION_LATEST, launcher_state_files, ray_process_pattern, session_logs
from rayfleet.cluster import redis_store, runtime, systemd_unit, tls
from rayfleet.cluster.dashboard import list_nodes
from rayfleet.cluster.fleet_monitoring import ensure_monitoring, monitoring_dir
from rayfleet.cluster.launcher import (KNOWN_HOSTS_ENV, SSH_KEY_ENV, gcs_store, remote_token_path, render, render_yaml,
                                       started_mark, supervisor_dir, worker_start_command)
from rayfleet.cluster.node_start import SUPERVISOR_MODULE
from rayfleet.cluster.preflight import runner_for
from rayfleet.cluster.serving import haproxy_dir
from rayfleet.cluster.ssh import SSHError
from rayfleet.cluster.state import auth_headers as state_auth_headers
from rayfleet.cluster.state import ensure_token, ray_executable, state_dir, with_venv_path
from rayfleet.config.fleet import FleetSpec, shell_path
from rayfleet.errors import ClusterError, ClusterNotRunning, RayfleetError

__all__ = ["FleetPaths", "paths", "up", "down", "nodes", "auth_headers", "dashboard_url", "dashboard_label",
           "ray_processes", "export_config", "exec_on", "logs"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FleetPaths:
    dir: Path

    @property
    def token(self) -> Path:
        return self.dir / "auth_token"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def launcher_yaml(self) -> Path:
        return self.dir / "ray-cluster.yaml"

    @property
    def ray_tmp(self) -> Path:
        return self.dir / "ray-tmp"


def paths(fleet: FleetSpec) -> FleetPaths:
    p = FleetPaths(state_dir() / "fleets" / fleet.name)
    p.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p


def dashboard_url(fleet: FleetSpec) -> str:
    """The dashboard / Jobs API as this process reaches it: on the head's loopback (the default), a local
    SSH tunnel to it, opened once per process (cluster/tunnel.py); else its address on the LAN."""
    from rayfleet.cluster.tunnel import dashboard_target, shared

    if fleet.dashboard_tunneled:
        return shared(fleet).url
    host, port = dashboard_target(fleet)   # a LAN address: the head's own reaches it from here too
    return f"http://{host}:{port}"


def dashboard_label(fleet: FleetSpec) -> str:
    """Where the dashboard is, for people: its URL, or how to open it when it is on the head's loopback."""
    if fleet.dashboard_tunneled:
        return "on the head's loopback ('rayfleet dashboard' opens it through SSH)"
    return dashboard_url(fleet)


def auth_headers(fleet: FleetSpec) -> dict[str, str]:
    if not fleet.auth_enabled:
        return {}
    token = paths(fleet).token
    if not token.exists():
        raise ClusterNotRunning(f"Fleet '{fleet.name}' has no auth token yet ({token}).",
                                hint="Bring it up first: rayfleet up -f fleet.yaml")
    return state_auth_headers(token)


def _launcher_env(fleet: FleetSpec) -> dict[str, str]:
    p = paths(fleet)
    p.ray_tmp.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["RAY_UP_enable_autoscaler_v2"] = "0"   # v2 is broken with provider 'local' on Ray 2.60
    env["RAY_TMPDIR"] = str(p.ray_tmp)         # the launcher's local state files, per fleet
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # the launcher's host key checks (launcher.proxy_command): the fleet's pinned keys, its SSH key
    env[KNOWN_HOSTS_ENV] = str(p.known_hosts)
    env[SSH_KEY_ENV] = fleet.ssh_for(fleet.head)[1]
    return with_venv_path(env)


def export_config(fleet: FleetSpec) -> str:
    """The launcher YAML rayfleet uses (for users who want ``ray up`` themselves)."""
    p = paths(fleet)
    return render_yaml(fleet, ensure_token(p.dir) if fleet.auth_enabled else None, p.known_hosts)


def nodes(fleet: FleetSpec, timeout_s: float = 10) -> list[dict]:
    """Ray's node table (alive and dead) from the head's dashboard."""
    return list_nodes(dashboard_url(fleet), auth_headers(fleet), timeout_s)


def head_restarts(fleet: FleetSpec) -> dict | None:
    """The head supervisor's restart record (``supervisor.read_restarts``) and what supervises it
    (``supervised``: node_start's record, {"by": "systemd"|"watchdog", ...}), read on the head over SSH;
    None when head recovery is off."""
    if fleet.head_recovery.store == "off":
        return None
    d = supervisor_dir(fleet)
    cmd = (f"cat {shell_path(d + '/restarts.json')} 2>/dev/null; echo; echo ---; "
           f"cat {shell_path(d + '/supervised.json')} 2>/dev/null; true")
    try:
        out = exec_on(fleet, fleet.head.host, cmd, timeout_s=20).stdout
    except SSHError:
        return None
    restarts, _, supervised = out.partition("\n---\n")
    data, by = _json_or_empty(restarts), _json_or_empty(supervised)
    return {"count": int(data.get("count", 0)), "history": list(data.get("history", [])), "supervised": by}


def _json_or_empty(text: str) -> dict:
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def alive_ips(fleet: FleetSpec) -> set[str]:
    """The addresses of the fleet's ALIVE nodes (none when its head does not answer)."""
    try:
        return {n["node_ip"] for n in nodes(fleet, timeout_s=5) if n.get("state") == "ALIVE"}
    except (RayfleetError, ValueError, KeyError):   # down, unreachable, a name that does not resolve
        return set()


def _labels(fleet: FleetSpec, addresses: set[str]) -> str:
    label = {n.address: n.label for n in fleet.nodes}
    return ", ".join(label.get(a, a) for a in sorted(addresses))


def _wait_alive(fleet: FleetSpec, expected: set[str], timeout_s: float, progress: Progress | None) -> None:
    """Until the nodes at the ``expected`` addresses are alive."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        alive = alive_ips(fleet) & expected
        msg = f"{len(alive)}/{len(expected)} nodes alive" + (
            f" (waiting for {_labels(fleet, expected - alive)})" if expected - alive else "")
        if progress and msg != last:
            progress(msg)
            last = msg
        if alive == expected:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"Only {len(alive)} of {len(expected)} nodes are alive after {timeout_s:.0f} s; "
                               f"missing: {_labels(fleet, expected - alive)}.",
                               hint="See 'rayfleet logs HOST' and the launcher log in "
                                    f"{paths(fleet).dir}/up.log")
        time.sleep(0.25)


def _run_launcher(fleet: FleetSpec, args: list[str], log_name: str, timeout_s: float) -> None:
    p = paths(fleet)
    log = p.dir / log_name
    with open(log, "w") as f:
        try:
            r = subprocess.run([ray_executable(), *args], env=_launcher_env(fleet), stdout=f, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=timeout_s, cwd=p.dir)
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"'ray {args[0]}' did not finish in {timeout_s:.0f} s.", hint=f"See {log}.") from e
    if r.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ClusterError(f"'ray {args[0]}' failed (exit {r.returncode}).", context=tail, hint=f"Full log: {log}")


def up(fleet: FleetSpec, *, progress: Progress | None = None, timeout_s: float = 600) -> list[dict]:
    """Bring the fleet up through Ray's launcher; wait until head + min_workers are alive; Prometheus
    as ``monitoring:`` says."""
    alive = _up(fleet, progress=progress, timeout_s=timeout_s)
    ensure_monitoring(fleet, progress)
    return alive


def _up(fleet: FleetSpec, *, progress: Progress | None = None, timeout_s: float = 600) -> list[dict]:
    p = paths(fleet)
    token = ensure_token(p.dir) if fleet.auth_enabled else None
    text = render_yaml(fleet, token, p.known_hosts)
    changed = not p.launcher_yaml.exists() or p.launcher_yaml.read_text() != text
    # Nodes are matched by address (Ray's node_ip): a host written as a name is resolved here.
    expected = {fleet.head.address} | {w.address for w in fleet.workers[:fleet.min_workers]}
    alive = alive_ips(fleet)
    if not changed and expected <= alive:
        if progress:
            progress("unchanged: every expected node is alive")
        return nodes(fleet)
    if not changed and fleet.head.address in alive:
        # Same config, head alive, workers missing: keep the head and its services, and
        # restart Ray on the missing workers with the launcher's own worker commands
        # (Ray 2.60's v1 autoscaler did not bring a worker whose raylet died back in 10 min).
        missing = sorted(expected - alive)
        if progress:
            progress(f"head alive, config unchanged: restarting Ray on {_labels(fleet, set(missing))}")
        if fleet.shipped:   # a node may be a new machine in the old one's place
            runtime.install(fleet, [n for n in fleet.workers if n.address in missing], progress=progress,
                            timeout_s=max(timeout_s, 1200))
        _ship_certs(fleet, [n for n in fleet.workers if n.address in missing], progress)
        errors = _start_workers_twice(fleet, missing, timeout_s)
        if errors:
            raise ClusterError("Could not restart Ray on: " + "; ".join(errors),
                               hint="See 'rayfleet logs HOST', fix the node, and run 'rayfleet up' again.")
        _wait_alive(fleet, expected, timeout_s, progress)
        return nodes(fleet)
    if fleet.shipped:
        runtime.install(fleet, progress=progress, timeout_s=max(timeout_s, 1200))
    _ship_certs(fleet, fleet.nodes, progress)
    did = redis_store.start(fleet, p.dir, p.known_hosts)   # head_recovery.store: redis (before the head starts)
    if progress and did:
        progress(did)
    p.launcher_yaml.write_text(text)
    if progress:
        progress("starting the head through Ray's cluster launcher")
    _run_launcher(fleet, ["up", "-y", "--no-config-cache", "--disable-usage-stats", str(p.launcher_yaml)],
                  "up.log", timeout_s)
    if _fast_start(fleet):
        # The head is up. Start Ray on the workers now, with the launcher's own commands,
        # instead of waiting for the v1 autoscaler to launch them (15-20 s later); its updater
        # then finds them started (launcher.py: the one-shot mark) and does not restart them.
        # A worker where this fails twice is left to the autoscaler, as with plain `ray up`.
        if progress:
            progress("head up: starting Ray on the workers")
        t0 = time.monotonic()
        workers = sorted(expected - {fleet.head.address})
        errors = _start_workers_twice(fleet, workers, timeout_s)
        with open(p.dir / "up.log", "a") as log:
            log.write(f"rayfleet: started Ray on the workers itself in {time.monotonic() - t0:.1f} s"
                      + (f"; left to the autoscaler: {'; '.join(errors)}\n" if errors else "\n"))
    _wait_alive(fleet, expected, timeout_s, progress)
    removed = runtime.prune(fleet)   # the old runtime stays until the new one runs
    if progress and any(removed.values()):
        progress("removed older runtimes: " + ", ".join(f"{h} {' '.join(d)}" for h, d in removed.items() if d))
    return nodes(fleet)


def _ship_certs(fleet: FleetSpec, nodes: list, progress: Progress | None, *, renew: bool = False) -> None:
    """Each node's TLS certificate and key onto it (security.tls; cluster/tls.py), before Ray starts there."""
    if not fleet.security.tls or not nodes:
        return
    if progress:
        progress(f"TLS: {'new ' if renew else ''}certificates to {len(nodes)} node(s)")
    p = paths(fleet)
    errors = tls.ship(fleet, nodes, p.dir, p.known_hosts, renew=renew)
    if errors:
        raise ClusterError("Could not put the TLS certificates on: " + "; ".join(f"{h}: {e}" for h, e in errors.items()),
                           hint="Fix SSH to those nodes (rayfleet check) and run the command again.")


def renew_certs(fleet: FleetSpec, *, new_ca: bool = False, progress: Progress | None = None) -> None:
    """New node certificates (and with ``new_ca`` a new CA) on every node; Ray reads them when it starts."""
    if new_ca:
        tls.new_ca(paths(fleet).dir, fleet.name)
    _ship_certs(fleet, fleet.nodes, progress, renew=True)


def _fast_start(fleet: FleetSpec) -> bool:
    """rayfleet starts the workers itself only when the autoscaler would start every one of
    them at once (no autoscaling) and no user setup_commands would then run twice."""
    return bool(fleet.workers) and fleet.min_workers == len(fleet.workers) and not fleet.setup_commands


def _head_session(fleet: FleetSpec, timeout_s: float = 30) -> str:
    """The session name of the Ray running on the head (every node of it shares it)."""
    tmp = shlex.quote(fleet.temp_dir)
    r = runner_for(fleet, fleet.head, paths(fleet).known_hosts).run(
        f"basename \"$(readlink {tmp}/{SESSION_LATEST})\"", timeout_s=timeout_s)
    return r.stdout.strip()


def _start_workers_twice(fleet: FleetSpec, addresses: list[str], timeout_s: float) -> list[str]:
    """``_start_workers``, and once more on the nodes where it failed (on a loaded machine a
    raylet sometimes times out registering: "The current node timed out during startup")."""
    errors = _start_workers(fleet, addresses, timeout_s)
    if errors:
        errors = _start_workers(fleet, sorted(errors), timeout_s)
    return list(errors.values())


def _start_workers(fleet: FleetSpec, addresses: list[str], timeout_s: float,
                   session: str | None = None) -> dict[str, str]:
    """Start Ray on the workers at these addresses for the head's session (default: its current one;
    launcher.worker_start_command), in parallel, with the token and setup the launcher
    would ship first. Returns the errors by address."""
    if not addresses:
        return {}
    p = paths(fleet)
    try:
        command = worker_start_command(fleet, session or _head_session(fleet))
    except (SSHError, ValueError) as e:
        return {a: f"can't read the head's Ray session: {e}" for a in addresses}
    setup = render(fleet, p.token)["setup_commands"][len(fleet.setup_commands):]  # rayfleet's own only
    token = p.token.read_text() if fleet.auth_enabled else None
    if token is not None:
        path = remote_token_path(fleet)
        ship = (f"umask 077; mkdir -p $(dirname {path}) && cat > {path}.tmp && mv {path}.tmp {path}")
        command = " && ".join([ship, *setup]) + "; " + command
    else:
        command = " && ".join(setup) + "; " + command
    by_address = {n.address: n for n in fleet.workers}

    def one(address: str) -> str | None:
        node = by_address[address]
        try:
            r = runner_for(fleet, node, p.known_hosts).run(command, timeout_s=timeout_s, input=token)
        except SSHError as e:
            return f"{node.label}: {e.message}"
        return None if r.ok else f"{node.label}: {(r.stderr or r.stdout).strip()[-300:]}"

    with ThreadPoolExecutor(len(addresses)) as pool:
        return {a: e for a, e in zip(addresses, pool.map(one, addresses)) if e}


def _haproxy_pattern(fleet: FleetSpec) -> str:
    """Serve's HAProxy of this fleet (its config is in the fleet's private HAProxy dir). Ray starts it
    without a parent-death signal: `ray stop` leaves it running, listening on the services' port.
    Its first character in brackets: the shell that runs pgrep holds the pattern in its own command
    line, and must not match it (pgrep would kill the command that runs it)."""
    d = haproxy_dir(fleet.temp_dir) + "/"
    return f"haproxy.*[{d[0]}]{re.escape(d[1:])}"


def ray_processes(fleet: FleetSpec) -> dict[str, list[str]]:
    """Ray processes (and the fleet's HAProxy) still running, per host (over SSH)."""
    pattern = shlex.quote(ray_process_pattern() + "|" + _haproxy_pattern(fleet) + "|[r]ayfleet[.]cluster[.]supervisor")

    def one(node) -> tuple[str, list[str]]:
        r = runner_for(fleet, node, paths(fleet).known_hosts)
        try:
            res = r.run(f"pgrep -a -f {pattern} | grep -v pgrep || true", timeout_s=20)
        except SSHError as e:
            return node.host, [f"(unreachable: {e.message})"]
        return node.host, [ln for ln in res.stdout.splitlines() if ln.strip()]

    with ThreadPoolExecutor(len(fleet.nodes)) as pool:
        return dict(pool.map(one, fleet.nodes))


def down(fleet: FleetSpec, *, progress: Progress | None = None, timeout_s: float = 60) -> None:
    """Stop Ray on every node (head and workers), remove launcher state, verify nothing is left."""
    p = paths(fleet)
    known = p.known_hosts
    name = shlex.quote(fleet.name)
    tmp = shlex.quote(fleet.temp_dir)
    # The head's autoscaler keeps its provider state in $RAY_TMPDIR/ray (= temp_dir/ray);
    # /tmp/ray and temp_dir itself are where older setups and Ray's defaults put it.
    stop_cmd = (f"{_any_ray(fleet)} stop --force >/dev/null 2>&1; "
                f"pgrep -f {shlex.quote(_haproxy_pattern(fleet))} | xargs -r kill -9; rm -f "
                + " ".join(f for d in ("/tmp/ray", tmp, f"{tmp}/ray") for f in launcher_state_files(name, d))
                + f" {shlex.quote(started_mark(fleet))}; true")
    if progress:
        progress(f"stopping Ray on {len(fleet.nodes)} nodes")
    # Ray's launcher copied the SSH private key (and its config) to the head: no key stays behind.
    # Nor a node's TLS key (`up` ships it again).
    stop_cmd += f"; rm -rf {shell_path(tls.remote_dir(fleet))}"
    head_cmd = (stop_cmd + "; rm -f ~/ray_bootstrap_key.pem ~/ray_bootstrap_config.yaml; "
                # Prometheus, whatever monitoring says now (it may have been on); its data stays
                f"{fleet.venv_sh}/bin/python -m rayfleet.cluster.monitoring stop "
                f"{shell_path(monitoring_dir(fleet))} >/dev/null 2>&1; true")
    if fleet.head_recovery.store != "off":
        # The head's supervisor first (it would start the head again), by PID if that is a supervisor; its
        # record goes first, so that a supervisor checking meanwhile ends by itself. The store goes with Ray.
        d = shell_path(supervisor_dir(fleet))
        head_cmd = (f"d={d}; rm -f \"$d/record.json\"; {systemd_unit.stop_shell(fleet.name)}; "
                    f"p=$(cat \"$d/supervisor.pid\" 2>/dev/null); "
                    f"if [ -n \"$p\" ] && grep -qa {SUPERVISOR_MODULE} /proc/$p/cmdline 2>/dev/null; then kill $p; fi; "
                    f"rm -f \"$d/supervisor.pid\" \"$d/supervised.json\" \"$d/{redis_store.PASSWORD_FILE}\"; " + head_cmd
                    + f"; rm -rf {shell_path(gcs_store(fleet))}")

    def stop(node) -> str | None:
        try:
            runner_for(fleet, node, known).run(head_cmd if node is fleet.head else stop_cmd, timeout_s=timeout_s)
            return None
        except SSHError as e:
            return f"{node.host}: {e.message}"

    # Workers and head together: `ray down` would stop only the head and leave
    # workers to linger ~60 s; `ray stop --force` on each node ends them at once.
    with ThreadPoolExecutor(len(fleet.nodes)) as pool:
        errors = [e for e in pool.map(stop, fleet.nodes) if e]
    redis_node = redis_store.node(fleet)   # rayfleet's Redis (head_recovery.store: redis), once the head is stopped
    if redis_node is not None:
        try:
            runner_for(fleet, redis_node, known).run(redis_store.stop_command(fleet), timeout_s=timeout_s)
        except SSHError as e:
            errors.append(f"{redis_node.host}: Redis: {e.message}")
    for d in (p.ray_tmp, p.ray_tmp / "ray"):  # the launcher's own state (RAY_TMPDIR/ray)
        for f in launcher_state_files(fleet.name, str(d)):
            Path(f).unlink(missing_ok=True)
    deadline = time.monotonic() + 20
    while True:
        left = {h: procs for h, procs in ray_processes(fleet).items() if procs}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    if errors:
        raise ClusterError("Could not reach every node to stop Ray: " + "; ".join(errors),
                           hint="Fix SSH to those nodes and run 'rayfleet down' again.")
    if left:
        detail = "; ".join(f"{h}: {len(v)} process(es)" for h, v in left.items())
        raise ClusterError(f"Ray processes are still running after down: {detail}.",
                           hint="Look with: rayfleet exec HOST -- pgrep -a -f ray")


def _any_ray(fleet: FleetSpec) -> str:
    """Shell text that runs, as its last word, the ``ray`` CLI to stop Ray with on a node: the fleet's,
    else (rayfleet was upgraded since ``up``, so its runtime is another) any runtime installed there."""
    if not fleet.shipped:
        return fleet.ray_cli
    root = shell_path(fleet.runtime.path)
    return (f"R=ray; for r in {fleet.ray_cli} {root}/*/bin/ray; do if [ -x \"$r\" ]; then R=\"$r\"; break; fi; "
            'done; "$R"')


def exec_on(fleet: FleetSpec, host: str, command: str, timeout_s: float = 600):
    node = fleet.node(host)
    if node is None:
        raise ClusterError(f"Host {host!r} is not in fleet '{fleet.name}'.",
                           hint="Hosts: " + ", ".join(n.host for n in fleet.nodes))
    return runner_for(fleet, node, paths(fleet).known_hosts).run(command, timeout_s=timeout_s)


def logs(fleet: FleetSpec, host: str, lines: int = 50) -> str:
    """The tail of the main Ray logs on one node."""
    d = shlex.quote(session_logs(fleet.temp_dir))
    r = exec_on(fleet, host, f"cd {d} 2>/dev/null || {{ echo 'no Ray logs on this node'; exit 0; }}; "
                              f"for f in raylet.out gcs_server.out monitor.log dashboard.log; do "
                              f"[ -f $f ] && {{ echo \"==> $f <==\"; tail -n {lines} $f; }}; done; true")
    return r.stdout
