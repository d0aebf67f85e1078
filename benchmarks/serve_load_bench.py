"""Serving as users load it, side by side: variable-length text, latency under open-loop load, metrics on/off.

One command, one run, one Ray cluster (own temp RAYFLEET_HOME, ports from --port-base, default 29500,
stopped at the end whatever happens), the model of serve_bench.py (opus-mt-en-fr's exact shape, random
weights), rayfleet's ctranslate2 backend (int8), 2 replicas x 1 thread, max_batch_size 64:

1. Variable-length text. Source lengths drawn from a long-tailed distribution (log-normal, median ~14
   tokens, clipped to 3-120; each text one sentence, so the service translates exactly what the
   ceiling does). Outputs end at different lengths: the model's generation config has min_new_tokens 1
   (serve_bench's is 32; the service and the ceiling both decode with 1), and the model gets an EOS bias (``final_logits_bias[eos]``, which
   CTranslate2's converter keeps), calibrated in process until greedy outputs average --mean-output
   tokens (measured with CTranslate2 int8, the engine served). With random weights, the step at which
   EOS first wins the argmax depends on the input,
   so every text stops at its own length (cap: max_new_tokens 160). Served: closed-loop clients
   take the texts from one shared list until every text is translated once. Ceiling: in-process
   CTranslate2 with every input known up front, sorted by length, cut into batches all submitted at
   once to the same threads (1 intra x 2 inter), at the best batch size found in the same run. The service
   twice: batching by length (the default) and in arrival order (``batching.order: arrival``). Rounds
   interleave, order rotating.
2. Latency under load, on serve_bench's fixed work (20 source ids -> 32 output tokens): a lone
   request's latency (one client, one request at a time), the most the service does (closed loop,
   1.5 x replicas x batch clients), then open-loop Poisson arrivals at 25 %, 50 % and 75 % of that
   most: p50/p99 (from each request's scheduled arrival, so a late client counts against us).
3. Metrics on vs off: the fixed-work service twice, once with Ray's metrics collection off in its
   replicas (``RAY_enable_metrics_collection=0`` in their environment: neither Serve's metrics nor
   rayfleet's are recorded; the script checks that none of that service's are exported), closed
   loop, interleaved rounds: what the metrics cost (goal < 3 %).

4. Bulk: ``rayfleet translate-file`` on --bulk-lines (3,000) variable-length lines, end to end (the Ray
   job's start included; the services deleted first; one actor per core), vs the in-process ceiling
   on the same lines.

``--json FILE`` writes every figure, with ``ratios.variable_served_vs_ceiling``, ``ratios.bulk_vs_ceiling``,
``latency.p99_at_50pct_over_lone`` and ``metrics.off_over_on`` (numbers).

    .venv/bin/python benchmarks/serve_load_bench.py --quick     # about 15 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serve_bench as sb

MAX_NEW = 160
# The service's decoding options for the variable-length model (serve/backends/ct2.py reads them from its
# generation config, min_new_tokens 1): the ceiling and the calibration use the same. (Before, the model had
# no minimum, so the service let EOS win at the first step, transformers' semantics, while the ceiling ran
# with CTranslate2's own default minimum of 1: the service returned empty translations for every text and
# "beat its ceiling" 3x. With no minimum on both sides, EOS wins either at once or never: 455 of 600 empty
# outputs, the rest at the cap. A minimum of 1 gives outputs that end at input-dependent lengths.)
MIN_NEW = 1
DECODE = dict(beam_size=1, min_decoding_length=MIN_NEW, max_decoding_length=MAX_NEW, max_input_length=0)
METRICS_OFF = {"RAY_enable_metrics_collection": "0"}


# ---------------------------------------------------------------------------------------------
# The variable-length model and texts
# ---------------------------------------------------------------------------------------------

def variable_texts(model_dir: Path, count: int, seed: int = 3) -> list[str]:
    """``count`` one-sentence texts whose token counts follow a log-normal (median ~14), clipped to 3-120."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    texts = []
    while len(texts) < count:
        target = min(120, max(3, round(rng.lognormvariate(math.log(14), 0.75))))
        words: list[str] = []
        while len(tokenizer(" ".join(words).capitalize() + ".")["input_ids"]) < target:
            words.append(rng.choice(sb._WORDS))
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def _mean_output(model, tokenizer, out: Path, sources: list[list[str]], bias: float) -> float:
    """Mean output tokens of CTranslate2 (int8, the engine the service runs) with the EOS bias ``bias``."""
    import ctranslate2
    import torch
    from transformers.utils import logging as hf_logging

    with torch.no_grad():
        model.final_logits_bias[0, sb.EOS] = bias
    hf_logging.disable_progress_bar()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    converted = out.parent / (out.name + "-ct2-calibration")
    ctranslate2.converters.TransformersConverter(str(out)).convert(str(converted), quantization="int8", force=True)
    translator = ctranslate2.Translator(str(converted), device="cpu", compute_type="int8", intra_threads=2)
    results = translator.translate_batch(sources, max_batch_size=32, **DECODE)
    del translator
    return statistics.mean(len(r.hypotheses[0]) for r in results)


def build_variable_model(fixed_dir: Path, out: Path, texts: list[str], mean_output: float) -> tuple[Path, float]:
    """serve_bench's model with min_new_tokens 1 (not 32) and with an EOS bias calibrated (bisection on 64 texts, with
    CTranslate2 int8: transformers' float32 argmax ties break differently) so that greedy outputs average
    ``mean_output`` tokens. (dir, bias)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fixed_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(fixed_dir).eval()
    model.generation_config.min_new_tokens = MIN_NEW   # the service decodes with it too (DECODE)
    sources = [tokenizer.convert_ids_to_tokens(tokenizer(t)["input_ids"]) for t in texts[:64]]
    lo, hi = 0.0, 40.0   # bias 0: EOS (almost) never wins; 40: at once
    for _ in range(9):
        mid = (lo + hi) / 2
        if _mean_output(model, tokenizer, out, sources, mid) > mean_output:
            lo = mid
        else:
            hi = mid
    bias = (lo + hi) / 2
    _mean_output(model, tokenizer, out, sources, bias)   # the model saved with it
    shutil.rmtree(out.parent / (out.name + "-ct2-calibration"), ignore_errors=True)
    return out, bias


# ---------------------------------------------------------------------------------------------
# Load: every text once (closed loop), open loop (Poisson)
# ---------------------------------------------------------------------------------------------

async def _post(session, url: str, body: bytes) -> bytes | None:
    """One request; its body when answered 200, else None."""
    import aiohttp

    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            data = await r.read()
            return data if r.status == 200 else None
    except aiohttp.ClientError:
        return None


async def _every_text_once(url: str, bodies: list[bytes], concurrency: int,
                           answers: dict[int, str] | None = None) -> tuple[list[float], float, int]:
    """Every body sent once by ``concurrency`` closed-loop clients; (latencies, seconds, errors). ``answers``
    gets each text's translation by index."""
    import aiohttp

    queue = list(range(len(bodies)))[::-1]
    latencies: list[float] = []
    errors = 0

    async def client(session) -> None:
        nonlocal errors
        while queue:
            t0 = time.perf_counter()
            i = queue.pop()
            data = await _post(session, url, bodies[i])
            if data is not None:
                latencies.append(time.perf_counter() - t0)
                if answers is not None:
                    answers[i] = json.loads(data)["translation"]
            else:
                errors += 1

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, errors


async def _open_loop(url: str, bodies: list[bytes], rate: float, duration_s: float,
                     seed: int) -> tuple[list[float], int, int]:
    """Poisson arrivals at ``rate``/s for ``duration_s``; latency from each request's scheduled arrival.
    (latencies, sent, errors)."""
    import aiohttp

    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0

    async def one(session, body: bytes, due: float) -> None:
        nonlocal errors
        if await _post(session, url, body) is not None:
            latencies.append(time.perf_counter() - due)
        else:
            errors += 1

    tasks = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        start = time.perf_counter()
        due = start
        while True:
            due += rng.expovariate(rate)
            if due - start > duration_s:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, bodies[len(tasks) % len(bodies)], due)))
        await asyncio.gather(*tasks)
    return latencies, len(tasks), errors


def _ceiling_variable(ct2_path: Path, sources: list[list[str]], inter: int, size: int) -> float:
    """Seconds for in-process CTranslate2 to translate every source once: sorted by length up front, cut
    into batches of ``size``, all submitted at once (asynchronous), so every one of the ``inter`` model
    threads works. (One translate_batch call runs on one thread only, whatever its max_batch_size.)"""
    import ctranslate2

    translator = ctranslate2.Translator(str(ct2_path), device="cpu", compute_type="int8", intra_threads=1,
                                        inter_threads=inter)
    ordered = sorted(sources, key=len)
    opts = DECODE
    translator.translate_batch(ordered[:8], **opts)   # warm up
    t0 = time.perf_counter()
    pending = [translator.translate_batch(ordered[i:i + size], asynchronous=True, **opts)
               for i in range(0, len(ordered), size)]
    for results in pending:
        for r in results:
            r.result()
    elapsed = time.perf_counter() - t0
    del translator
    return elapsed


def _outputs(ct2_path: Path, sources: list[list[str]]) -> list[list[str]]:
    """Each source's output tokens, in process, with the service's decoding options."""
    import ctranslate2

    translator = ctranslate2.Translator(str(ct2_path), device="cpu", compute_type="int8", intra_threads=2)
    results = translator.translate_batch(sources, max_batch_size=32, **DECODE)
    return [r.hypotheses[0] for r in results]


def _exported(endpoints: list[str], application: str) -> int:
    """Samples of ``application``'s replica metrics (rayfleet's) on the nodes' metrics endpoints. (Serve's
    request metrics come from the proxy, not the replicas: they stay.)"""
    from rayfleet.cluster.top import from_endpoints

    snap = from_endpoints(endpoints)
    return sum(1 for s in snap.samples if s.name.startswith("ray_rayfleet_") and s.labels.get("application") == application)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds, 15 s per load point (default: 3 rounds, 30 s)")
    ap.add_argument("--texts", type=int, default=600, help="variable-length texts per round (600)")
    ap.add_argument("--mean-output", type=float, default=16.0,
                    help="mean output tokens the EOS bias is calibrated to (16)")
    ap.add_argument("--batch", type=int, default=64, help="max_batch_size of the services (64)")
    ap.add_argument("--replicas", type=int, default=2, help="replicas per service, 1 CPU each (2)")
    ap.add_argument("--bulk-lines", type=int, default=3000, help="lines of the translate-file run (3000)")
    ap.add_argument("--port-base", type=int, default=29500)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else 3
    duration = 15.0 if args.quick else 30.0
    clients = (3 * args.replicas * args.batch + 1) // 2

    cpu_model, flags = sb._cpu()
    work = Path(tempfile.mkdtemp(prefix="rf-load-bench-", dir="/tmp"))
    home = work / "home"
    os.environ["RAYFLEET_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        os.environ.setdefault("CT2_FORCE_CPU_ISA", "AVX512")
    os.environ.pop("CT2_USE_MKL", None)
    os.environ["RAY_worker_niceness"] = "0"

    from rayfleet.cluster import local
    from rayfleet.cluster.monitoring import sd_file
    from rayfleet.cluster.state import LocalPorts
    from rayfleet.cluster.target import target_for
    from rayfleet.cluster.top import endpoints_from_sd_file
    from rayfleet.config.service import ServiceSpec
    from rayfleet.serve.backends.ct2 import convert_cached, int8_weight_bits
    from rayfleet.serve.deploy import deploy

    b = args.port_base + 790
    ports = LocalPorts(gcs=b, dashboard=b + 1, serve=b + 2, client_server=b + 3, dashboard_agent=b + 4,
                       min_worker=b + 10, max_worker=b + 209, min_replica=b + 210, max_replica=b + 409)
    print(f"CPU: {cpu_model}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    report: dict = {"cpu": cpu_model, "rounds": rounds, "duration_s": duration}
    try:
        fixed_dir = sb.build_model(work / "fixed")
        texts = variable_texts(fixed_dir, args.texts)
        t0 = time.perf_counter()
        var_dir, bias = build_variable_model(fixed_dir, work / "variable", texts, args.mean_output)
        bits = int8_weight_bits("cpu")
        convert_cached(str(fixed_dir), "int8", weight_bits=bits)   # once here, not in every replica at once
        var_ct2 = convert_cached(str(var_dir), "int8", weight_bits=bits).path
        sources = sb._sources(var_dir, texts)
        in_lengths = [len(s) for s in sources]
        outputs = _outputs(var_ct2, sources)
        out_lengths = [len(o) for o in outputs]
        from transformers import AutoTokenizer

        var_tokenizer = AutoTokenizer.from_pretrained(var_dir)
        expected = [var_tokenizer.decode(var_tokenizer.convert_tokens_to_ids(o), skip_special_tokens=True)
                    for o in outputs]
        report["variable"] = {"eos_bias": bias, "texts": len(texts),
                              "source_tokens": {"mean": statistics.mean(in_lengths), "p50": sb._pct(in_lengths, .5),
                                                "p90": sb._pct(in_lengths, .9), "max": max(in_lengths)},
                              "output_tokens": {"mean": statistics.mean(out_lengths),
                                                "p50": sb._pct(out_lengths, .5), "p90": sb._pct(out_lengths, .9),
                                                "max": max(out_lengths)}}
        print(f"variable-length model: EOS bias {bias:.2f} (calibrated in {time.perf_counter() - t0:.0f} s); "
              f"{len(texts)} texts, source tokens mean {statistics.mean(in_lengths):.1f} (p50 "
              f"{sb._pct(in_lengths, .5)}, p90 {sb._pct(in_lengths, .9)}, max {max(in_lengths)}), output tokens "
              f"mean {statistics.mean(out_lengths):.1f} (p50 {sb._pct(out_lengths, .5)}, p90 "
              f"{sb._pct(out_lengths, .9)}, max {max(out_lengths)})", flush=True)

        cluster = local.start(ports=ports, num_cpus=max(10, 2 + 4 * args.replicas), directory=home).cluster
        target = target_for(cluster)
        common = dict(batching={"max_batch_size": args.batch, "batch_wait_timeout_s": 0.01},
                      limits={"max_texts": 64}, resources={"num_cpus": 1}, replicas=args.replicas,
                      backend="ctranslate2")
        var_url = deploy(target, ServiceSpec(name="var", route_prefix="/var", model=str(var_dir),
                                             generation={"max_new_tokens": MAX_NEW}, **common), []).url
        # the same, batching in arrival order (batching.order: arrival), side by side
        arrival = dict(common, batching=dict(common["batching"], order="arrival"))
        arr_url = deploy(target, ServiceSpec(name="var-arrival", route_prefix="/var-arrival", model=str(var_dir),
                                             generation={"max_new_tokens": MAX_NEW}, **arrival), []).url
        fixed = dict(model=str(fixed_dir), generation={"max_new_tokens": sb.OUTPUT_TOKENS}, **common)
        on_url = deploy(target, ServiceSpec(name="on", route_prefix="/on", **fixed), []).url
        off_url = deploy(target, ServiceSpec(name="off", route_prefix="/off", **fixed), [],
                         runtime_env={"env_vars": METRICS_OFF}).url
        print("deployed: var and var-arrival (variable-length model; batches by length / in arrival order), on and "
              "off (fixed work; off: metrics collection off)",
              flush=True)
        var_bodies = [json.dumps({"text": t}).encode() for t in texts]
        sentences = sb.make_sentences(fixed_dir, 64)
        fixed_bodies = [json.dumps({"text": s}).encode() for s in sentences]
        for url, bodies in ((var_url, var_bodies), (arr_url, var_bodies), (on_url, fixed_bodies),
                            (off_url, fixed_bodies)):
            sb.run_load(f"{url}/translate", bodies[:8], 8, 0.1)   # warm up

        # 1. Variable-length text: the ceiling's setting first, then interleaved rounds.
        tried = sorted(((len(sources) / _ceiling_variable(var_ct2, sources, args.replicas, n), n)
                        for n in (16, 32, 64, 128)), reverse=True)
        best = tried[0][1]
        print("ceiling batch sizes: " + ", ".join(f"{n}: {r:.1f}/s" for r, n in tried), flush=True)
        var: dict[str, list[float]] = {"served": [], "served_arrival": [], "ceiling": []}
        var_lat: list[float] = []
        var_errors = 0
        answers: dict[int, str] = {}
        order = list(var)
        client_cpu: list[float] = []
        for r in range(rounds):
            for key in order[r % 3:] + order[:r % 3]:
                if key != "ceiling":
                    url = var_url if key == "served" else arr_url
                    cpu0 = time.process_time()
                    lat, elapsed, errors = asyncio.run(_every_text_once(f"{url}/translate", var_bodies, clients,
                                                                        answers if key == "served" else {}))
                    # the load generator shares the 2 cores with the service: what it took of them
                    client_cpu.append((time.process_time() - cpu0) / elapsed)
                    if key == "served":
                        var_lat += lat
                    var_errors += errors
                    rate = len(lat) / elapsed
                else:
                    rate = len(sources) / _ceiling_variable(var_ct2, sources, args.replicas, best)
                var[key].append(rate)
                print(f"round {r + 1}/{rounds} variable-length, {key}: {rate:.1f} texts/s", flush=True)
        same = sum(answers.get(i) == e for i, e in enumerate(expected))
        print(f"same work: {same} of {len(expected)} served translations equal the in-process ones "
              f"({sum(1 for e in expected if not e)} of those are empty)", flush=True)
        served, ceiling = statistics.median(var["served"]), statistics.median(var["ceiling"])
        report["variable"].update(served_texts_per_s=served, ceiling_texts_per_s=ceiling, ceiling_setting=best,
                                  served_arrival_texts_per_s=statistics.median(var["served_arrival"]),
                                  client_cores=statistics.median(client_cpu),
                                  served_p50_s=sb._pct(var_lat, .5), served_p99_s=sb._pct(var_lat, .99),
                                  errors=var_errors, rounds=var, same_outputs=same)

        # 3. Metrics on vs off (closed loop, interleaved), which also gives the most the service does.
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(rounds):
            for key in (("on", "off") if r % 2 == 0 else ("off", "on")):
                lat, elapsed, errors = sb.run_load(f"{on_url if key == 'on' else off_url}/translate", fixed_bodies,
                                                   clients, duration)
                rates[key].append(len(lat) / elapsed)
                print(f"round {r + 1}/{rounds} metrics {key}: {len(lat) / elapsed:.1f} sentences/s"
                      + (f" ({errors} errors)" if errors else ""), flush=True)
        endpoints = ["127.0.0.1:" + e.rsplit(":", 1)[1] for e in endpoints_from_sd_file(sd_file(cluster.temp_dir))]
        exported = {"on": _exported(endpoints, "on"), "off": _exported(endpoints, "off")}
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        report["metrics"] = {"on_sentences_per_s": on, "off_sentences_per_s": off, "off_over_on": off / on,
                             "rounds": rates, "samples_exported": exported}

        # 2. Latency: a lone request, then Poisson arrivals at fractions of the most.
        lone, _, _ = sb.run_load(f"{on_url}/translate", fixed_bodies, 1, duration / 2)
        most = on
        points = {}
        for frac in (0.25, 0.5, 0.75):
            lat, sent, errors = asyncio.run(_open_loop(f"{on_url}/translate", fixed_bodies, frac * most, duration,
                                                       seed=int(frac * 100)))
            points[f"{int(frac * 100)}pct"] = {"rate": frac * most, "sent": sent, "errors": errors,
                                               "p50_s": sb._pct(lat, .5), "p99_s": sb._pct(lat, .99)}
            print(f"open loop at {frac:.0%} of {most:.1f}/s: p50 {sb._pct(lat, .5) * 1000:.0f} ms, p99 "
                  f"{sb._pct(lat, .99) * 1000:.0f} ms ({sent} sent, {errors} errors)", flush=True)
        lone_p50 = sb._pct(lone, .5)
        report["latency"] = {"lone_p50_s": lone_p50, "lone_p99_s": sb._pct(lone, .99), "max_sentences_per_s": most,
                             "points": points, "p99_at_50pct_over_lone": points["50pct"]["p99_s"] / lone_p50}
        # 4. Bulk: translate-file on --bulk-lines variable-length lines, end to end (the job's start included),
        # with the services deleted (their CPUs free) and as many actors as this machine has cores.
        from rayfleet.serve.deploy import delete_service

        for name in ("var", "var-arrival", "on", "off"):
            delete_service(target, name)
        bulk_texts = variable_texts(fixed_dir, args.bulk_lines, seed=5)
        bulk_in, bulk_out = work / "bulk.jsonl", work / "bulk-out.jsonl"
        bulk_in.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(bulk_texts, 1)))
        bulk_sources = sb._sources(var_dir, bulk_texts)
        cores = os.cpu_count() or 2
        bulk: dict[str, list[float]] = {"served": [], "ceiling": []}
        for r in range(rounds):
            for key in (("served", "ceiling") if r % 2 == 0 else ("ceiling", "served")):
                if key == "served":
                    t0 = time.perf_counter()
                    res = subprocess.run([str(Path(sys.executable).parent / "rayfleet"), "translate-file", str(bulk_in),
                                          str(bulk_out), "--model", str(var_dir), "--backend", "ctranslate2",
                                          "--max-new-tokens", str(MAX_NEW), "--actors", str(cores), "--restart",
                                          "--quiet"], capture_output=True, text=True, timeout=3600,
                                         stdin=subprocess.DEVNULL)
                    elapsed = time.perf_counter() - t0
                    if res.returncode != 0:
                        raise RuntimeError(f"translate-file failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")
                    assert len(bulk_out.read_text().splitlines()) == len(bulk_texts)
                    rate = len(bulk_texts) / elapsed
                else:
                    rate = len(bulk_sources) / _ceiling_variable(var_ct2, bulk_sources, cores, best)
                bulk[key].append(rate)
                print(f"round {r + 1}/{rounds} bulk ({len(bulk_texts)} lines), {key}: {rate:.1f} lines/s "
                      f"({len(bulk_texts) / rate:.0f} s)", flush=True)
        b_served, b_ceiling = statistics.median(bulk["served"]), statistics.median(bulk["ceiling"])
        report["bulk"] = {"lines": len(bulk_texts), "actors": cores, "served_lines_per_s": b_served,
                          "ceiling_lines_per_s": b_ceiling, "rounds": bulk}
        report["ratios"] = {"variable_served_vs_ceiling": served / ceiling,
                            "variable_served_arrival_order_vs_ceiling": statistics.median(var["served_arrival"]) / ceiling,
                            "bulk_vs_ceiling": b_served / b_ceiling}
        _print(report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0
    finally:
        try:
            local.stop(directory=home)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _verdict(ratio: float) -> str:
    """Against the >= 90 % target; a 'ceiling' the service beats by far did other work: no verdict then."""
    if ratio > 1.1:
        return "NO RESULT: the service beat its ceiling, so the two did not do the same work"
    return f"target >= 90%: {'met' if ratio >= 0.9 else 'NOT met'}"


def _print(rep: dict) -> None:
    v, m, lat = rep["variable"], rep["metrics"], rep["latency"]
    print()
    print(f"CPU: {rep['cpu']}; {rep['rounds']} interleaved rounds; medians of rounds")
    print("| variable-length text | texts/s | p50 | p99 |")
    print("|---|---|---|---|")
    print(f"| rayfleet ctranslate2, every text once, closed loop | {v['served_texts_per_s']:.1f} | "
          f"{v['served_p50_s']:.2f} s | {v['served_p99_s']:.2f} s |")
    print(f"| the same, batching in arrival order (batching.order: arrival) | {v['served_arrival_texts_per_s']:.1f} "
          f"| - | - |")
    print(f"| in-process CTranslate2, sorted by length (batches of {v['ceiling_setting']}) | "
          f"{v['ceiling_texts_per_s']:.1f} | - | - |")
    ratio = rep["ratios"]["variable_served_vs_ceiling"]
    print(f"(the load generator, in this process, took {v['client_cores']:.2f} of the {os.cpu_count()} cores while "
          "the service ran)")
    print(f"served / ceiling, variable-length: {ratio:.0%} ({_verdict(ratio)}); in arrival order "
          f"{rep['ratios']['variable_served_arrival_order_vs_ceiling']:.0%}; same work: {v['same_outputs']} of "
          f"{v['texts']} served translations equal the in-process ones; output tokens mean "
          f"{v['output_tokens']['mean']:.1f}, p90 {v['output_tokens']['p90']}, max {v['output_tokens']['max']}")
    print()
    print(f"| fixed work, open loop | arrivals/s | p50 | p99 | p99 / lone p50 ({lat['lone_p50_s'] * 1000:.0f} ms) |")
    print("|---|---|---|---|---|")
    for name, p in lat["points"].items():
        print(f"| {name.replace('pct', ' %')} of {lat['max_sentences_per_s']:.1f}/s | {p['rate']:.1f} | "
              f"{p['p50_s'] * 1000:.0f} ms | {p['p99_s'] * 1000:.0f} ms | {p['p99_s'] / lat['lone_p50_s']:.1f}x |")
    q = lat["p99_at_50pct_over_lone"]
    print(f"p99 at 50 % load / a lone request: {q:.1f}x (target <= 3x: {'met' if q <= 3 else 'NOT met'})")
    bk = rep["bulk"]
    q = rep["ratios"]["bulk_vs_ceiling"]
    print()
    print(f"bulk: translate-file of {bk['lines']} lines with {bk['actors']} actors, end to end (job start included): "
          f"{bk['served_lines_per_s']:.1f} lines/s; in-process ceiling (sorted): {bk['ceiling_lines_per_s']:.1f} "
          f"lines/s; {q:.0%} ({_verdict(q)})")
    print()
    print(f"metrics on: {m['on_sentences_per_s']:.1f} sentences/s, off: {m['off_sentences_per_s']:.1f} "
          f"(off / on {m['off_over_on']:.3f}; samples exported by the services: {m['samples_exported']}); "
          f"overhead {1 - 1 / m['off_over_on']:.1%} (goal < 3 %)")


if __name__ == "__main__":
    sys.exit(main())
