"""rayfleet up/down vs raw `ray up`/`ray down` on the same 3 namespace hosts (needs root).

  python benchmarks/cluster_bench.py [--rounds N] [--compare-src DIR] [--no-raw-down] [--keep]

Each round runs every variant once, in an order that rotates from round to round (so a
load change on a shared machine does not always hit the same variant):
(a) `rayfleet up` (check included), then `rayfleet down` until no Ray process remains
on any host; (b) raw `ray up` of the rendered launcher config as its header says (the v1 autoscaler,
RAY_UP_enable_autoscaler_v2=0; the fleet's pinned host keys and SSH key for its host key checks;
the nodes' TLS certificates put there first by `rayfleet certs --renew`, untimed), then `ray down` until no Ray process remains on any
host (polled over SSH, at most 120 s); with --compare-src, (c) the same as (a) with the
rayfleet found in DIR (e.g. a copy of src/ from before a change), side by side.
`rayfleet check` alone is timed too.

Every up is timed the same way: one poller, started with the command, asks the head's
GCS for the node table every 0.25 s, and the up time is when it first sees every node
ALIVE (not when the command returns: raw `ray up` returns before its workers start,
rayfleet's after). A variant that doesn't get every node alive within --up-timeout
(or whose command fails) fails its round: the failure is counted and printed for that
variant, and the round is left out of the ratios. Prints the times, the up ratio of
each round (rayfleet / raw of the same round), their median and the failures per
variant; --json FILE writes them. Targets: up <= 1.1x raw, down <= 20 s.
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rayfleet.testing.hosts import HostLab, lab_supported  # noqa: E402

BIN = Path(sys.executable).parent


class VariantFailed(Exception):
    """One variant did not get every node alive (on a loaded machine Ray's own starts time out)."""


class Poller:
    """Started with an up command: the seconds until every node is ALIVE in the GCS's node table, asked every
    0.25 s (the same poller for every variant), or None after ``timeout_s``."""

    def __init__(self, alive, want: set[str], timeout_s: float):
        self.t0 = time.monotonic()
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(alive, want, timeout_s), daemon=True)
        self._thread.start()

    def _run(self, alive, want: set[str], timeout_s: float) -> None:
        while not self._stop.is_set() and time.monotonic() - self.t0 < timeout_s:
            if alive() == want:
                self.seconds = time.monotonic() - self.t0
                return
            time.sleep(0.25)

    def result(self) -> float | None:
        self._thread.join()
        return self.seconds

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _up(label: str, cmd: list[str], env: dict, log: Path, alive, want: set[str], timeout_s: float) -> float:
    """Run an up command with the poller beside it; the poller's seconds, or VariantFailed."""
    poller = Poller(alive, want, timeout_s)
    with open(log, "w") as out:
        try:
            rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s + 60).returncode
        except subprocess.TimeoutExpired:
            poller.stop()
            raise VariantFailed(f"{label}: the command still ran after {timeout_s + 60:.0f} s (see {log}):\n"
                                f"{log.read_text()[-1500:]}") from None
    if rc != 0:
        poller.stop()
        raise VariantFailed(f"{label}: exit {rc} (see {log}):\n{log.read_text()[-1500:]}")
    seconds = poller.result()
    if seconds is None:
        raise VariantFailed(f"{label}: not every node ALIVE within {timeout_s:.0f} s (see {log}; Ray 2.60's v1 "
                            "autoscaler does not retry a failed worker start)")
    return seconds


def _rayfleet(args: tuple[str, ...], src: str | None) -> list[str]:
    if src:  # another rayfleet source tree, same venv
        return [sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r}); sys.argv[0] = 'rayfleet'; "
                                      "from rayfleet.cli.main import main; sys.exit(main())", *args]
    return [str(BIN / "rayfleet"), *args]


def _cli(*args: str, env: dict, src: str | None = None) -> None:
    r = subprocess.run(_rayfleet(args, src), env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise VariantFailed(f"rayfleet {' '.join(args)} failed ({src or 'this tree'}):\n{r.stdout[-1500:]}\n"
                            f"{r.stderr[-1500:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--compare-src", help="a src/ directory of another rayfleet, measured side by side")
    ap.add_argument("--no-raw-down", action="store_true",
                    help="don't time raw 'ray down' (it waits up to 120 s for the workers to give up)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) at the end")
    ap.add_argument("--up-timeout", type=int, default=300,
                    help="seconds to wait for every node; a variant that fails fails its round (counted per "
                         "variant, printed, left out of the ratios)")
    ap.add_argument("--json", type=Path, help="write the times, ratios and failures per variant to this file")
    args = ap.parse_args()
    why = lab_supported()
    if why:
        raise SystemExit(f"cluster_bench needs the namespace hosts: {why}")
    work = Path(tempfile.mkdtemp(prefix="rfbench-", dir="/var/tmp"))
    os.environ["RAYFLEET_HOME"] = str(work / "home")
    env = dict(os.environ)
    from rayfleet.cluster import fleet as fl
    from rayfleet.cluster.launcher import KNOWN_HOSTS_ENV, SSH_KEY_ENV
    from rayfleet.config.fleet import FleetSpec

    venv = str(BIN.parent)
    times: dict[str, list[float]] = {k: [] for k in ("check", "rayfleet up", "raw up", "rayfleet down", "raw down")}
    variants = ["rayfleet", "raw"]
    if args.compare_src:
        src = str(Path(args.compare_src).resolve())
        times.update({"compare up": [], "compare down": []})
        variants.append("compare")
    ratios: dict[str, list[float]] = {"rayfleet": [], "compare": []}
    failures: dict[str | None, list[str]] = {v: [] for v in [*variants, None]}   # None: the round's check
    failed_rounds = 0
    ok = False
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

            ff.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True)))
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

            def run_rayfleet(label: str, src: str | None) -> None:
                times[f"{label} up"].append(_up(f"{label} up", _rayfleet(("up", "-f", str(ff)), src), env,
                                                work / f"{label}-up.log", alive, all_ips, args.up_timeout))
                t0 = time.monotonic()
                _cli("down", "-f", str(ff), env=env, src=src)
                times[f"{label} down"].append(time.monotonic() - t0)
                if src:  # the next variant starts from what this tree's down leaves (state files removed)
                    _cli("down", "-f", str(ff), env=env)

            def run_raw() -> None:
                cfg = work / "raw.yaml"
                cfg.write_text(fl.export_config(spec))
                # as its header says, the nodes' TLS certificates first (untimed: `rayfleet up` ships them within
                # its time; without them every node's gRPC server fails to start)
                _cli("certs", "--renew", "-f", str(ff), env=env)
                # as the exported config's header says: Ray's v1 autoscaler, and the fleet's pinned host keys and
                # SSH key for the host key checks of its ProxyCommand (without them every SSH connection of the
                # launcher ends in "kex_exchange_identification: Connection closed by remote host")
                # the launcher's local state of an earlier round (nodes "up-to-date") gone, as after a `ray down`:
                # with it, `ray up` takes the stopped workers for running and never starts them
                shutil.rmtree(work / "raw-tmp", ignore_errors=True)
                raw_env = dict(env, RAY_UP_enable_autoscaler_v2="0", RAY_TMPDIR=str(work / "raw-tmp"),
                               **{KNOWN_HOSTS_ENV: str(fl.paths(spec).known_hosts), SSH_KEY_ENV: str(lab.key)})
                times["raw up"].append(_up("raw up", [str(BIN / "ray"), "up", "-y", "--no-config-cache", str(cfg)],
                                           raw_env, work / "raw-up.log", alive, all_ips, args.up_timeout))
                if not args.no_raw_down:
                    t0 = time.monotonic()
                    subprocess.run([str(BIN / "ray"), "down", "-y", str(cfg)],
                                   env=raw_env, capture_output=True, timeout=900)
                    no_ray_left()
                    times["raw down"].append(time.monotonic() - t0)
                _cli("down", "-f", str(ff), env=env)  # leave nothing behind whatever raw down did

            try:   # the fresh hosts' SSH keys, pinned once (untimed): rayfleet refuses unknown hosts
                _cli("check", "-f", str(ff), "--accept-new-hosts", env=env)
            except VariantFailed as e:
                raise SystemExit(f"the hosts' keys could not be pinned: {e}") from None
            for rnd in range(args.rounds):
                current = None
                order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
                n = {k: len(v) for k, v in times.items()}
                try:
                    t0 = time.monotonic()
                    _cli("check", "-f", str(ff), env=env)
                    times["check"].append(time.monotonic() - t0)
                    for v in order:
                        current = v
                        if v == "raw":
                            run_raw()
                        else:
                            run_rayfleet(v, src if v == "compare" else None)
                except VariantFailed as e:
                    failures[current].append(f"round {rnd + 1}: {str(e)[:600]}")
                    print(f"round {rnd + 1} ({' > '.join(order)}): {current} FAILED, round left out: "
                          f"{str(e)[:600]}", flush=True)
                    for k, v in times.items():
                        del v[n[k]:]
                    try:
                        _cli("down", "-f", str(ff), env=env)
                    except VariantFailed:
                        pass
                    failed_rounds += 1
                    continue
                for v in ratios:
                    if times.get(f"{v} up"):
                        ratios[v].append(times[f"{v} up"][-1] / times["raw up"][-1])
                print(f"round {rnd + 1} ({' > '.join(order)}): "
                      + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items() if v)
                      + "; up ratio " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in ratios.items() if v),
                      flush=True)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work} (home/fleets/bench/up.log, raw-up.log)")
    print(f"\nfailed rounds: {failed_rounds} of {args.rounds}; per variant: "
          + ", ".join(f"{v or 'check'} {len(f)}" for v, f in failures.items()))
    if args.json:
        args.json.write_text(json.dumps({
            "rounds": args.rounds, "failed_rounds": failed_rounds,
            "failures": {v or "check": f for v, f in failures.items()},
            "times_s": times, "median_s": {k: statistics.median(v) for k, v in times.items() if v},
            "ratios": {f"{k}_up_vs_raw": v for k, v in ratios.items() if v},
            "median_ratios": {f"{k}_up_vs_raw": statistics.median(v) for k, v in ratios.items() if v}}, indent=2))
    if not times["raw up"]:
        return
    print("\n| step | median s | min–max s |\n|---|---|---|")
    for k, v in times.items():
        if v:
            print(f"| {k} | {statistics.median(v):.1f} | {min(v):.1f}–{max(v):.1f} |")
    for k, v in ratios.items():
        if v:
            print(f"\nup ratio {k}/raw per round: {', '.join(f'{x:.2f}' for x in v)}; median "
                  f"{statistics.median(v):.2f} (target <= 1.1; rayfleet's includes the check)")
    print(f"down: rayfleet {statistics.median(times['rayfleet down']):.1f} s (target <= 20 s)"
          + (f" vs raw {statistics.median(times['raw down']):.1f} s (raw: until no Ray process remains, "
             "capped at 120 s)" if times["raw down"] else ""))


if __name__ == "__main__":
    main()
