"""What a head failure costs a fleet: head recovery on (the head's supervisor, with the RocksDB store or
rayfleet's Redis on a worker) vs off, on the same 3-host namespace fleet (needs root, and redis-server).

  python benchmarks/head_failover.py [--window 75] [--json FILE]

For each variant: ``rayfleet up`` (serve_host 0.0.0.0: a proxy on every node; 1 CPU per node), a
translator with 3 replicas (one per node), then one client thread sending requests back to back to a
worker's proxy and one to the head's, while every Ray process on the head is SIGKILLed (the
supervisor itself is left alone: on a real machine systemd would restart it too). Measured from the
kill, over ``--window`` seconds: failed requests on each proxy, seconds until Ray runs on the head
again, until every node is ALIVE (the workers under their old node ids), until the service is RUNNING
with all its replicas, and until the head's proxy answers again. With recovery off nothing starts
the head: the window shows what users then meet (the workers' raylets give up after Ray's 60 s
reconnect timeout), and ``rayfleet up`` afterwards is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rayfleet.testing.hosts import HostLab, lab_supported  # noqa: E402

BIN = Path(sys.executable).parent


def _cli(*args: str, env: dict, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    print(f"    $ rayfleet {' '.join(args)}", flush=True)
    r = subprocess.run([str(BIN / "rayfleet"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise SystemExit(f"rayfleet {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def _failed_after(load, t: float) -> tuple[int, int]:
    """(requests, failed) that ended after monotonic time t."""
    rows = [r for r in load.results if r[0] >= t]
    return len(rows), sum(1 for r in rows if r[1] != 200)


def _first_ok_after(load, t: float, failed_since: float | None) -> float | None:
    """Seconds from t until the first answer after the last failure (None: never failed, or never back)."""
    if failed_since is None:
        return None
    oks = [r[0] for r in load.results if r[0] > failed_since and r[1] == 200]
    return (oks[0] - t) if oks else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=75, help="seconds measured after the kill")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) at the end")
    args = ap.parse_args()
    why = lab_supported()
    if why:
        raise SystemExit(f"head_failover needs the namespace hosts: {why}")
    import yaml

    from rayfleet.cluster import fleet as fl
    from rayfleet.config.fleet import FleetSpec
    from rayfleet.config.loader import load_model
    from rayfleet.testing.load import Load
    from rayfleet.testing.tiny_model import build_tiny_marian

    work = Path(tempfile.mkdtemp(prefix="rfhf-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    os.environ["RAYFLEET_HOME"] = str(work / "home")
    env = dict(os.environ)
    model = build_tiny_marian(work / "tiny-marian", seed=0)
    results: dict[str, dict] = {}
    ok = False
    try:
        # Its own bridge and subnet, so it can run beside the multihost tests.
        with HostLab(3, work / "hosts", subnet="10.213.10", prefix="rff", keep=[str(ROOT), str(BIN.parent)]) as lab:
            head, workers = lab.hosts[0], lab.hosts[1:]
            (work / "shared").mkdir()   # the fleet's storage: the model goes there
            os.chmod(work / "shared", 0o777)
            for store in ("rocksdb", "redis", "off"):
                ff = work / f"fleet-{store}.yaml"
                # Redis: rayfleet's, on the last worker (TLS with the fleet's certificates).
                recovery = ({"store": store, "redis": {"host": workers[-1].ip}} if store == "redis"
                            else {"store": store})
                ff.write_text(yaml.safe_dump({
                    "name": f"hf{store}", "head": {"host": head.ip}, "workers": [{"host": h.ip} for h in workers],
                    "ssh": {"user": "root", "key": str(lab.key)}, "python": str(BIN.parent),
                    "resources": {"num_cpus": 1, "object_store_memory": 200 * 2**20},
                    "storage": {"path": str(work / "shared")},
                    "security": {"serve_host": "0.0.0.0"}, "head_recovery": recovery}))
                spec = load_model(FleetSpec, ff)
                print(f"head_recovery {store}", flush=True)
                _cli("up", "-f", str(ff), "--skip-check", "--accept-new-hosts", env=env)
                got: dict = {}
                try:
                    svc = work / "service.yaml"
                    svc.write_text(yaml.safe_dump({"name": "translator", "route_prefix": "/", "model": str(model),
                                                   "replicas": 3, "resources": {"num_cpus": 1}}))
                    _cli("serve", str(svc), "-f", str(ff), "--timeout", "400", env=env)
                    before = {n["node_ip"]: n["node_id"] for n in fl.nodes(spec) if n["state"] == "ALIVE"}
                    sup = Path(f"/root/.rayfleet/{spec.name}/head/supervisor.pid")
                    sid = head.exec(f"cat {sup} 2>/dev/null").stdout.strip() if store != "off" else ""
                    # Every Ray process on the head, by PID (the supervisor's session without it; all of Ray's).
                    pids = (f"ps -o pid= -s {sid} | grep -vw {sid}" if sid else
                            # (brackets: the shell that runs pgrep holds the pattern too, and must not match)
                            "pgrep -f '[r]aylet|[g]cs_server|[r]ay::|[d]ashboard|[r]ay_client_server|[m]onitor.py|"
                            "[l]og_monitor|[h]aproxy|[r]untime_env'")
                    with Load(f"http://{workers[0].ip}:8000", clients=1) as wload, \
                            Load(f"http://{head.ip}:8000", clients=1) as hload:
                        wload.wait_for(10)
                        hload.wait_for(10)
                        r = head.exec(f"{pids} | xargs -r kill -9; echo done")
                        assert r.stdout.strip().endswith("done"), r.stderr
                        t0 = time.monotonic()
                        marks: dict[str, float | None] = {"head back s": None, "nodes alive s": None,
                                                          "service RUNNING s": None}
                        while time.monotonic() - t0 < args.window:
                            now = time.monotonic() - t0
                            try:
                                nodes = fl.nodes(spec, timeout_s=2)
                            except Exception:   # noqa: BLE001 - the head is down: that is what is measured
                                nodes = []
                            alive = {n["node_ip"]: n["node_id"] for n in nodes if n["state"] == "ALIVE"}
                            if marks["head back s"] is None and head.ip in alive:
                                marks["head back s"] = now
                            if marks["nodes alive s"] is None and all(alive.get(h.ip) == before[h.ip]
                                                                      for h in workers) and head.ip in alive:
                                marks["nodes alive s"] = now
                            if marks["service RUNNING s"] is None and marks["head back s"] is not None:
                                out = _cli("services", "-f", str(ff), env=env, check=False).stdout
                                if "RUNNING" in out and "│ 3 " in out:
                                    marks["service RUNNING s"] = time.monotonic() - t0
                            time.sleep(1)
                    for name, load in (("worker proxy", wload), ("head proxy", hload)):
                        n, failed = _failed_after(load, t0)
                        fails = [row[0] for row in load.results if row[0] >= t0 and row[1] != 200]
                        got[f"{name}: requests"] = n
                        got[f"{name}: failed"] = failed
                        back = _first_ok_after(load, t0, fails[-1] if fails else None)
                        got[f"{name}: answering again s"] = back
                    got.update(marks)
                    if store == "off":
                        t1 = time.monotonic()
                        _cli("up", "-f", str(ff), "--skip-check", env=env)
                        got["rayfleet up after s"] = time.monotonic() - t1
                        out = _cli("services", "-f", str(ff), env=env, check=False).stdout
                        got["service after up"] = "RUNNING" if "translator" in out else "lost"
                finally:
                    _cli("down", "-f", str(ff), env=env, check=False)
                results[store] = got
                print("  " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in got.items()), flush=True)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}")
    keys = list(dict.fromkeys(k for v in results.values() for k in v))

    def cell(v) -> str:
        if v is None:
            return "—"
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    print(f"\nwindow {args.window:.0f} s after the kill\n\n| measure | " + " | ".join(results) + " |\n|---|"
          + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(cell(results[s].get(k)) for s in results) + " |")
    if args.json:
        args.json.write_text(json.dumps({"window_s": args.window, "results": results}, indent=2))


if __name__ == "__main__":
    main()
