"""rayfleet up/down vs raw `ray up`/`ray down` on the same 3 namespace hosts (needs root).

  python benchmarks/cluster_bench.py [--rounds N]

Each round, interleaved: (a) `rayfleet up` (check included) to all nodes alive, then
`rayfleet down` until no Ray process remains on any host; (b) raw `ray up` of the
rendered launcher config with the v1 workaround (RAY_UP_enable_autoscaler_v2=0), to
all nodes alive, then `ray down` until no Ray process remains on any host (polled
over SSH, at most 120 s). Prints the times and the ratios. Targets: up <= 1.1x raw,
down <= 20 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rayfleet.testing.hosts import HostLab, lab_supported  # noqa: E402


def _cli(*args: str, env: dict) -> None:
    r = subprocess.run([str(Path(sys.executable).parent / "rayfleet"), *args], env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"rayfleet {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    why = lab_supported()
    if why:
        raise SystemExit(f"cluster_bench needs the namespace hosts: {why}")
    work = Path(tempfile.mkdtemp(prefix="rfbench-", dir="/var/tmp"))
    os.environ["RAYFLEET_HOME"] = str(work / "home")
    env = dict(os.environ)
    from rayfleet.cluster import fleet as fl
    from rayfleet.config.fleet import FleetSpec

    venv = str(Path(sys.executable).parent.parent)
    times: dict[str, list[float]] = {k: [] for k in ("rayfleet up", "raw up", "rayfleet down", "raw down")}
    try:
        # Its own bridge and subnet, so it can run beside the multihost tests.
        with HostLab(3, work / "hosts", subnet="10.213.8", prefix="rfb", keep=[str(ROOT), venv]) as lab:
            (work / "shared").mkdir()
            spec = FleetSpec(name="bench", head={"host": lab.hosts[0].ip},
                             workers=[{"host": h.ip} for h in lab.hosts[1:]],
                             ssh={"user": "root", "key": str(lab.key)}, python=venv,
                             resources={"num_cpus": 1, "object_store_memory": 100 * 2**20},
                             storage={"path": str(work / "shared")})
            ff = work / "fleet.yaml"
            import yaml

            ff.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
            all_ips = {h.ip for h in lab.hosts}

            def alive() -> set[str]:
                try:
                    return {n["node_ip"] for n in fl.nodes(spec, timeout_s=5) if n["state"] == "ALIVE"}
                except Exception:
                    return set()

            def no_ray_left(limit: float = 120) -> float:
                t0 = time.monotonic()
                while any(fl.ray_processes(spec).values()):
                    if time.monotonic() - t0 > limit:
                        break
                    time.sleep(0.5)
                return time.monotonic() - t0

            for rnd in range(args.rounds):
                t0 = time.monotonic()
                _cli("up", "-f", str(ff), env=env)
                times["rayfleet up"].append(time.monotonic() - t0)
                t0 = time.monotonic()
                _cli("down", "-f", str(ff), env=env)
                times["rayfleet down"].append(time.monotonic() - t0)

                cfg = work / "raw.yaml"
                cfg.write_text(fl.export_config(spec))
                raw_env = dict(env, RAY_UP_enable_autoscaler_v2="0", RAY_TMPDIR=str(work / "raw-tmp"))
                t0 = time.monotonic()
                subprocess.run([str(Path(sys.executable).parent / "ray"), "up", "-y", "--no-config-cache", str(cfg)],
                               env=raw_env, capture_output=True, timeout=900, check=True)
                while alive() != all_ips:
                    if time.monotonic() - t0 > 600:
                        raise SystemExit("raw ray up: nodes not alive after 600 s")
                    time.sleep(0.5)
                times["raw up"].append(time.monotonic() - t0)
                t0 = time.monotonic()
                subprocess.run([str(Path(sys.executable).parent / "ray"), "down", "-y", str(cfg)],
                               env=raw_env, capture_output=True, timeout=900)
                no_ray_left()
                times["raw down"].append(time.monotonic() - t0)
                _cli("down", "-f", str(ff), env=env)  # leave nothing behind whatever raw down did
                print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
        ok = True
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work} (fleets/bench/up.log, hosts/*/tmp/rayfleet/session_latest/logs)")
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| step | median s |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} |")
    print(f"\nup ratio rayfleet/raw: {med['rayfleet up'] / med['raw up']:.2f} (target <= 1.1; rayfleet's includes the check)")
    print(f"down: rayfleet {med['rayfleet down']:.1f} s (target <= 20 s) vs raw {med['raw down']:.1f} s "
          "(raw: until no Ray process remains, capped at 120 s)")


if __name__ == "__main__":
    main()
