"""What mutual TLS on Ray's gRPC costs: the same 3-host namespace fleet with ``security.tls`` on and
off, side by side (needs root).

  python benchmarks/tls_bench.py [--rounds 1] [--quick]

Each round brings the fleet up once with TLS on and once off (the order rotates from round to round)
and measures on each, in this order:
- up: ``rayfleet up`` to every node alive (check skipped; the venv of this machine is on every host);
- cluster traffic: a Ray job of small tasks spread over the 3 nodes plus objects of 4 MB pulled
  across nodes (Ray's gRPC is all this job does): seconds;
- serve: the translator (a tiny Marian, 2 replicas) under closed-loop load on the head's port:
  requests/s and p50 latency (requests go HTTP -> HAProxy -> replica; TLS is on Ray's control path);
- train: ``rayfleet train`` of the tiny job, 2 DDP workers on 2 nodes, wall clock including job
  start, evaluation and checkpoints;
then ``down``. Prints a table and the on/off ratio of each measure (median over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rayfleet.testing.hosts import HostLab, lab_supported  # noqa: E402

BIN = Path(sys.executable).parent
TRAFFIC_JOB = """
import time, ray, numpy as np
ray.init()
@ray.remote(num_cpus=0.01)
def tiny(i):
    return i
@ray.remote(num_cpus=0.01)
def make(mb):
    return np.ones(mb * 2**18, dtype=np.float32)
@ray.remote(num_cpus=0.01)
def size(a):
    return a.nbytes
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
t0 = time.time()
ray.get([tiny.options(scheduling_strategy=On(nodes[i % len(nodes)], soft=False)).remote(i) for i in range({tasks})])
refs = [make.options(scheduling_strategy=On(nodes[i % len(nodes)], soft=False)).remote(4) for i in range({objects})]
ray.get([size.options(scheduling_strategy=On(nodes[(i + 1) % len(nodes)], soft=False)).remote(r)
         for i, r in enumerate(refs)])
print("TRAFFIC_S", time.time() - t0)
"""


def _cli(*args: str, env: dict, timeout: float = 900) -> str:
    print(f"    $ rayfleet {' '.join(args)}", flush=True)
    r = subprocess.run([str(BIN / "rayfleet"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"rayfleet {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def _load(url: str, duration_s: float, concurrency: int) -> tuple[float, float, int]:
    """serve_bench's closed loop (4 sentences per request): (requests/s, p50 latency s, failed requests)."""
    from serve_bench import run_load

    body = json.dumps({"texts": ["The cat sleeps on the red chair.", "A small dog eats bread.",
                                 "The old man reads a book.", "My sister drinks water."]}).encode()
    latencies, elapsed, failed = run_load(url, [body], concurrency, duration_s)
    return len(latencies) / elapsed, statistics.median(latencies) if latencies else float("nan"), failed


def _train_job(work: Path, steps: int) -> Path:
    import yaml

    from rayfleet.train.corpus import write_corpus

    spec = yaml.safe_load((ROOT / "examples" / "finetune-tiny.yaml").read_text())
    spec.pop("search", None)
    spec.pop("register", None)
    syn = spec["data"].pop("synthetic")
    write_corpus(work / "data", seed=syn["seed"], train_size=syn["train_size"], validation_size=syn["validation_size"])
    spec["data"].update(train="data/train.tsv", validation="data/validation.tsv")
    spec.update(name="tls-bench", eval={"every_steps": steps}, checkpoints={"every_steps": steps, "keep": 1})
    spec["training"]["max_steps"] = steps
    spec["scaling"]["num_workers"] = 2
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="shorter load and training (1 round takes ~10 min)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) at the end")
    args = ap.parse_args()
    why = lab_supported()
    if why:
        raise SystemExit(f"tls_bench needs the namespace hosts: {why}")
    duration, steps, tasks, objects = (15, 60, 1500, 30) if args.quick else (30, 150, 3000, 60)
    work = Path(tempfile.mkdtemp(prefix="rftls-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    os.environ["RAYFLEET_HOME"] = str(work / "home")
    env = dict(os.environ)
    import yaml

    from rayfleet.testing.tiny_model import build_tiny_marian

    model = build_tiny_marian(work / "tiny-marian", seed=0)
    job = _train_job(work, steps)
    results: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    ok = False
    try:
        # Its own bridge and subnet, so it can run beside the multihost tests.
        with HostLab(3, work / "hosts", subnet="10.213.9", prefix="rft", keep=[str(ROOT), str(BIN.parent)]) as lab:
            (work / "shared").mkdir()
            os.chmod(work / "shared", 0o777)

            def fleet_file(tls: bool) -> Path:
                ff = work / f"fleet-{'on' if tls else 'off'}.yaml"
                ff.write_text(yaml.safe_dump({
                    "name": f"tls{'on' if tls else 'off'}", "head": {"host": lab.hosts[0].ip},
                    "workers": [{"host": h.ip} for h in lab.hosts[1:]],
                    "ssh": {"user": "root", "key": str(lab.key)}, "python": str(BIN.parent),
                    "resources": {"num_cpus": 1, "object_store_memory": 200 * 2**20},
                    "storage": {"path": str(work / "shared")}, "security": {"tls": tls}}))
                return ff

            def measure(variant: str) -> None:
                ff = str(fleet_file(variant == "on"))
                got = results[variant]
                t0 = time.monotonic()
                _cli("up", "-f", ff, "--skip-check", "--accept-new-hosts", env=env)
                got.setdefault("up s", []).append(time.monotonic() - t0)
                try:
                    script = work / "traffic.py"
                    script.write_text(textwrap.dedent(TRAFFIC_JOB.format(tasks=tasks, objects=objects)))
                    out = _cli("submit", "-f", ff, "--", "python", str(script), env=env)
                    got.setdefault("cluster traffic s", []).append(
                        float(next(ln for ln in out.splitlines() if "TRAFFIC_S" in ln).split()[-1]))
                    svc = work / "service.yaml"
                    svc.write_text(yaml.safe_dump({"name": "translator", "route_prefix": "/", "model": str(model),
                                                   "replicas": 2, "resources": {"num_cpus": 1}}))
                    _cli("serve", str(svc), "-f", ff, "--timeout", "400", env=env)
                    rps, p50, failed = _load(f"http://{lab.hosts[0].ip}:8000/translate", duration, 8)
                    got.setdefault("serve req/s", []).append(rps)
                    got.setdefault("serve p50 ms", []).append(p50 * 1000)
                    got.setdefault("serve failed", []).append(failed)
                    _cli("services", "delete", "translator", "-f", ff, env=env)
                    t0 = time.monotonic()
                    _cli("train", str(job), "-f", ff, "--quiet", env=env)
                    got.setdefault("train s", []).append(time.monotonic() - t0)
                except BaseException as e:   # shown before down (whose own failure would replace it)
                    print(f"tls {variant}: {e!r}", flush=True)
                    raise
                finally:
                    _cli("down", "-f", ff, env=env)
                print(f"  tls {variant}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in got.items()), flush=True)

            for rnd in range(args.rounds):
                order = ["on", "off"] if rnd % 2 == 0 else ["off", "on"]
                print(f"round {rnd + 1} ({' > '.join(order)})", flush=True)
                for variant in order:
                    measure(variant)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}")
    print("\n| measure | TLS on | TLS off | on/off |\n|---|---|---|---|")
    for k in results["on"]:
        on, off = statistics.median(results["on"][k]), statistics.median(results["off"][k])
        print(f"| {k} | {on:.1f} | {off:.1f} | {on / off if off else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
