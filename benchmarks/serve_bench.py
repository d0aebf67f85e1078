"""Serving throughput, side by side: blog-style Serve vs rayfleet (transformers, ctranslate2) vs in-process CTranslate2.

One command, one run, interleaved rounds (every round runs every variant, so a
noisy neighbour hurts all of them alike), bounded closed-loop load on 127.0.0.1:

  1. blog-style: a Serve deployment as in the usual blog post / Ray's getting-started
     translator: transformers ``generate`` on one sentence per request, no batching,
     the model call blocking the replica's event loop, Serve's defaults otherwise;
     (a) 1 replica, as the blog posts run it, and (b) as many replicas as rayfleet's
     variants (the same CPUs: the fair comparison, which the ratio's target uses);
  2. rayfleet, ``backend: transformers``;
  3. rayfleet, ``backend: ctranslate2`` (int8);
  4. in-process CTranslate2 on the same converted model, no HTTP: the ceiling, at the best
     setting found in the same run before the rounds (batch 16/32/64/128 x all threads in
     one batch or one thread per concurrent batch, on the CPUs the served variants use).

The variants' order rotates from round to round. ``--json FILE`` writes every row and
``ratios`` (numbers): ``served_vs_ceiling``, ``served_vs_blog_equal_cpu``,
``served_vs_blog_1_replica`` (served = rayfleet ctranslate2).

The model has opus-mt-en-fr's exact shape (d_model 512, 6+6 layers, 8 heads,
ffn 2048, vocab 59,514, swish, tied embeddings, pad = decoder start = 59513,
eos = 0; 75.1M parameters), random weights, built locally with a small
SentencePiece vocabulary padded to 59,514 entries. Work per sentence is fixed:
every input sentence tokenizes to exactly 20 source ids (19 pieces + ``</s>``),
and every output is exactly 32 tokens: the model's generation config has
``min_new_tokens = 32`` and no forced EOS, the services run with
``max_new_tokens: 32`` (transformers then never stops early; CTranslate2 gets
``min_decoding_length = max_decoding_length = 32`` from the same config), and the
benchmark checks 32 tokens in process for both libraries before it starts.

The script starts its own Ray cluster (own temp RAYFLEET_HOME, ports from
--port-base, default 29000) and stops it at the end, whatever happens.

    .venv/bin/python benchmarks/serve_bench.py --quick     # about 6 minutes
    .venv/bin/python benchmarks/serve_bench.py             # about 15 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ray import serve
from starlette.requests import Request

HERE = Path(__file__).resolve().parent
VOCAB, PAD, EOS = 59514, 59513, 0
SOURCE_IDS, OUTPUT_TOKENS = 20, 32
_WORDS = ("the a cat dog house car city river garden morning evening friend teacher child book letter "
          "table window door street market small big red green old new quiet bright sees finds takes buys "
          "reads wants likes writes opens closes near under behind before after every today yesterday "
          "tomorrow with without and but because").split()


# ---------------------------------------------------------------------------------------------
# Variant 1: the blog-style deployment. Its replica imports this module (PYTHONPATH=benchmarks).
# ---------------------------------------------------------------------------------------------

@serve.deployment
class BlogTranslator:
    """As the blog posts write it: load in __init__, generate one text per request."""

    def __init__(self, model: str):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model)

    def translate(self, text: str) -> str:
        ids = self.model.generate(**self.tokenizer([text], return_tensors="pt"), max_new_tokens=OUTPUT_TOKENS)
        return self.tokenizer.decode(ids[0], skip_special_tokens=True)

    async def __call__(self, request: Request) -> str:
        return self.translate(await request.json())


def blog_app(args: dict):
    return BlogTranslator.bind(args["model"])


# ---------------------------------------------------------------------------------------------
# The model and the inputs
# ---------------------------------------------------------------------------------------------

def build_model(out: Path) -> Path:
    """opus-mt-en-fr's shape with random weights, and a Marian tokenizer with a 59,514-entry vocab."""
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer
    from transformers.utils import logging as hf_logging

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 15))).capitalize() + "." for _ in range(2000)]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=proto, model_type="unigram", vocab_size=300,
        hard_vocab_limit=False, character_coverage=1.0, eos_id=0, unk_id=1, bos_id=-1, pad_id=-1,
        num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    for i in range(len(vocab), PAD):  # opus-mt's vocabulary size; these pieces never occur in the input
        vocab[f"\u2581w{i}"] = i
    vocab["<pad>"] = PAD
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(proto.getvalue())
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = MarianTokenizer(source_spm=str(out / "source.spm"), target_spm=str(out / "target.spm"),
                                    vocab=str(out / "vocab.json"), source_lang="en", target_lang="fr",
                                    model_max_length=512)
    config = MarianConfig(
        vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        max_position_embeddings=512, activation_function="swish", scale_embedding=True,
        pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=EOS, forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight[PAD].zero_()  # as in opus-mt: the start embedding is zero
    model.generation_config = GenerationConfig(
        decoder_start_token_id=PAD, eos_token_id=EOS, pad_token_id=PAD, forced_eos_token_id=None,
        bad_words_ids=[[PAD]], min_new_tokens=OUTPUT_TOKENS, num_beams=1, do_sample=False)
    hf_logging.disable_progress_bar()
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def make_sentences(model_dir: Path, count: int) -> list[str]:
    """``count`` different sentences that tokenize to exactly SOURCE_IDS ids each."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(1)
    found: list[str] = []
    while len(found) < count:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
        text = " ".join(words).capitalize() + "."
        if len(tokenizer(text)["input_ids"]) == SOURCE_IDS and text not in found:
            found.append(text)
    return found


def check_fixed_work(model_dir: Path, ct2_path: Path, sentence: str) -> None:
    """Both libraries produce exactly OUTPUT_TOKENS tokens for the benchmark's settings."""
    import ctranslate2
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    batch = tokenizer([sentence], return_tensors="pt")
    assert batch["input_ids"].shape[1] == SOURCE_IDS
    with torch.inference_mode():
        ids = model.generate(**batch, max_new_tokens=OUTPUT_TOKENS)
    assert ids.shape[1] == 1 + OUTPUT_TOKENS, ids.shape  # decoder start + 32 generated
    translator = ctranslate2.Translator(str(ct2_path), device="cpu", compute_type="int8", intra_threads=1)
    source = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    [result] = translator.translate_batch([source], beam_size=1, min_decoding_length=OUTPUT_TOKENS,
                                          max_decoding_length=OUTPUT_TOKENS)
    assert len(result.hypotheses[0]) == OUTPUT_TOKENS, len(result.hypotheses[0])


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------

async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, duration_s: float,
                       max_requests: int) -> tuple[list[float], float, int]:
    """``concurrency`` clients, each one request at a time, until the deadline or max_requests;
    requests in flight at the deadline finish and count. Returns (latencies, elapsed, errors)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    issued = 0
    start = time.perf_counter()
    deadline = start + duration_s
    last_done = start

    async def client(session, k: int) -> None:
        nonlocal issued, errors, last_done
        while time.perf_counter() < deadline and issued < max_requests:
            body = bodies[(issued + k) % len(bodies)]
            issued += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            now = time.perf_counter()
            if ok:
                latencies.append(now - t0)
                last_done = max(last_done, now)
            else:
                errors += 1

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        await asyncio.gather(*(client(session, k) for k in range(concurrency)))
    return latencies, last_done - start, errors


def run_load(url: str, bodies: list[bytes], concurrency: int, duration_s: float,
             max_requests: int = 100_000) -> tuple[list[float], float, int]:
    return asyncio.run(_closed_loop(url, bodies, concurrency, duration_s, max_requests))


CEILING_BATCHES = (16, 32, 64, 128)


def _ceiling_once(translator, sources: list[list[str]], batch: int, inter: int,
                  duration_s: float) -> tuple[list[float], float, int]:
    chunk = [sources[i % len(sources)] for i in range(batch)]
    opts = dict(beam_size=1, min_decoding_length=OUTPUT_TOKENS, max_decoding_length=OUTPUT_TOKENS,
                max_input_length=0)
    translator.translate_batch(chunk, **opts)  # warm up
    latencies: list[float] = []
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s:
        t0 = time.perf_counter()
        pending = [translator.translate_batch(chunk, asynchronous=True, **opts) for _ in range(inter)]
        for results in pending:
            for r in results:
                assert len(r.result().hypotheses[0]) == OUTPUT_TOKENS
        latencies.append(time.perf_counter() - t0)
        done += batch * inter
    return latencies, time.perf_counter() - start, done


def find_ceiling(ct2_path: Path, sources: list[list[str]], threads: int,
                 seconds: float = 4.0) -> tuple[int, int, int, list[str]]:
    """The best in-process setting on this machine now: every batch size of CEILING_BATCHES x (``threads``
    intra-op threads | ``threads`` batches at once), ``seconds`` each. (batch, intra, inter, the table)."""
    import ctranslate2

    tried = []
    for intra, inter in ((threads, 1), (1, threads)):
        translator = ctranslate2.Translator(str(ct2_path), device="cpu", compute_type="int8",
                                            intra_threads=intra, inter_threads=inter)
        for batch in CEILING_BATCHES:
            _, elapsed, done = _ceiling_once(translator, sources, batch, inter, seconds)
            tried.append((done / elapsed, batch, intra, inter))
        del translator
    rate, batch, intra, inter = max(tried)
    table = [f"batch {b} intra {i} x inter {n}: {r:.1f}/s" for r, b, i, n in sorted(tried, reverse=True)]
    return batch, intra, inter, table


def run_ceiling(ct2_path: Path, sources: list[list[str]], batch: int, intra: int, inter: int,
                duration_s: float) -> tuple[list[float], float, int]:
    """In-process CTranslate2 at one setting: back-to-back batches for ``duration_s``."""
    import ctranslate2

    translator = ctranslate2.Translator(str(ct2_path), device="cpu", compute_type="int8",
                                        intra_threads=intra, inter_threads=inter)
    try:
        return _ceiling_once(translator, sources, batch, inter, duration_s)
    finally:
        del translator


def _cpu() -> tuple[str, set[str]]:
    """The CPU's name (with family/model: virtual machines often say only "AMD EPYC") and its flags."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "?"
    if "cpu family" in info:
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name, set(info.get("flags", "").split())


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _deploy_blog(target, model_dir: Path, replicas: dict[str, int], timeout_s: float = 300) -> dict[str, str]:
    """The blog-style app once per name in ``replicas`` (name -> replica count, 1 CPU each as Serve's
    default); their URLs."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(target.dashboard_url, headers=dict(target.headers))
    client.deploy_applications({
        "http_options": {"host": target.serve_host, "port": target.serve_port},
        "applications": [{"name": name, "route_prefix": f"/{name}", "import_path": "serve_bench:blog_app",
                          "args": {"model": str(model_dir)},
                          "deployments": [{"name": "BlogTranslator", "num_replicas": n}]}
                         for name, n in replicas.items()],
    })
    deadline = time.monotonic() + timeout_s
    while True:
        apps = client.get_serve_details().get("applications") or {}
        states = {name: (apps.get(name) or {}).get("status") for name in replicas}
        if all(v == "RUNNING" for v in states.values()):
            return {name: target.url(f"/{name}") for name in replicas}
        if "DEPLOY_FAILED" in states.values() or time.monotonic() > deadline:
            raise RuntimeError(f"blog-style apps did not start: {states}")
        time.sleep(0.5)


def _stats(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/info", timeout=30).json()["batching"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 15 s per variant (default: 3 rounds of 30 s)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds per variant per round")
    ap.add_argument("--concurrency", type=int,
                    help="clients for the rayfleet variants (default 1.5 x replicas x batch: while a replica runs "
                         "a full batch, its next one is already queued)")
    ap.add_argument("--blog-concurrency", type=int, default=8,
                    help="clients for the blog-style variant (default 8; it serves one request at a time)")
    ap.add_argument("--batch", type=int, default=64, help="rayfleet max_batch_size and the ceiling's batch (64)")
    ap.add_argument("--replicas", type=int, default=2, help="replicas of each rayfleet variant (default 2)")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs (= model threads) per rayfleet replica (default 1)")
    ap.add_argument("--worker-niceness", type=int, default=0,
                    help="nice value of the cluster's Ray workers (Ray's default is 15; 0 = same priority as the "
                         "in-process ceiling and the clients, so a busy neighbour slows every variant alike)")
    ap.add_argument("--port-base", type=int, default=29000)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    args.concurrency = args.concurrency or (3 * args.replicas * args.batch + 1) // 2
    duration = args.duration or (15.0 if args.quick else 30.0)

    cpu_model, flags = _cpu()
    work = Path(tempfile.mkdtemp(prefix="rf-bench-", dir="/tmp"))
    home = work / "home"
    os.environ["RAYFLEET_HOME"] = str(home)  # the replicas' ct2 cache goes here too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags
    if avx512:  # CTranslate2 does not pick AVX-512 by itself; +7 % served, +13 % in process (notes)
        os.environ.setdefault("CT2_FORCE_CPU_ISA", "AVX512")
    os.environ.pop("CT2_USE_MKL", None)  # hangs on AMD CPUs
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)

    from rayfleet.cluster.target import target_for
    from rayfleet.cluster import local
    from rayfleet.cluster.state import LocalPorts
    from rayfleet.config.service import ServiceSpec
    from rayfleet.serve.backends.ct2 import convert_cached, int8_weight_bits
    from rayfleet.serve.deploy import deploy

    b = args.port_base + 790
    ports = LocalPorts(gcs=b, dashboard=b + 1, serve=b + 2, client_server=b + 3, dashboard_agent=b + 4,
                       min_worker=b + 10, max_worker=b + 209, min_replica=b + 210, max_replica=b + 409)
    print(f"CPU: {cpu_model}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; AVX-512: {avx512}; VNNI: "
          f"{bool(flags & {'avx512_vnni', 'avx_vnni'})}; CT2_FORCE_CPU_ISA={os.environ.get('CT2_FORCE_CPU_ISA', '-')}",
          flush=True)
    try:
        t0 = time.perf_counter()
        model_dir = build_model(work / "opus-mt-en-fr-shape")
        sentences = make_sentences(model_dir, 64)
        print(f"model built in {time.perf_counter() - t0:.0f} s: {model_dir}", flush=True)
        converted = convert_cached(str(model_dir), "int8", weight_bits=int8_weight_bits("cpu"))
        check_fixed_work(model_dir, converted.path, sentences[0])
        print(f"converted to CTranslate2 int8 ({int8_weight_bits('cpu')}-bit weights) in {converted.seconds:.0f} s; "
              f"checked: {SOURCE_IDS} source ids -> {OUTPUT_TOKENS} output tokens in both libraries", flush=True)

        cluster = local.start(ports=ports, num_cpus=max(8, 1 + 2 * args.replicas * args.cpus), directory=home).cluster
        target = target_for(cluster)
        blog_urls = _deploy_blog(target, model_dir, {"blog": 1, "blog-eq": args.replicas})
        common = dict(model=str(model_dir), generation={"max_new_tokens": OUTPUT_TOKENS},
                      batching={"max_batch_size": args.batch, "batch_wait_timeout_s": 0.01},
                      limits={"max_texts": 64})
        common.update(resources={"num_cpus": args.cpus}, replicas=args.replicas)
        hf = ServiceSpec(name="rf-hf", route_prefix="/rf-hf", backend="transformers", **common)
        ct2 = ServiceSpec(name="rf-ct2", route_prefix="/rf-ct2", backend="ctranslate2", **common)
        urls = {"rf-hf": deploy(target, hf, [], timeout_s=300).url,
                "rf-ct2": deploy(target, ct2, [], timeout_s=300).url}
        print(f"deployed: blog-style (1 and {args.replicas} replicas), rayfleet transformers, rayfleet ctranslate2",
              flush=True)

        rf_bodies = [json.dumps({"text": s}).encode() for s in sentences]
        blog_bodies = [json.dumps(s).encode() for s in sentences]
        sources = _sources(model_dir, sentences)
        threads = args.replicas * args.cpus   # the CPUs the served variants use
        c_batch, c_intra, c_inter, tried = find_ceiling(converted.path, sources, threads)
        ceiling_label = f"batch {c_batch}, intra {c_intra} x inter {c_inter}"
        print(f"ceiling: the best in-process setting of {len(tried)} ({', '.join(map(str, CEILING_BATCHES))} x 2 thread "
              f"splits, {threads} threads): {ceiling_label}\n  " + "\n  ".join(tried), flush=True)
        variants = {
            "blog": ("1a. blog-style Serve + transformers, 1 sentence/request, 1 replica",
                     lambda d: run_load(blog_urls["blog"], blog_bodies, args.blog_concurrency, d),
                     args.blog_concurrency),
            "blog-eq": (f"1b. the same, {args.replicas} replicas (rayfleet's CPUs)",
                        lambda d: run_load(blog_urls["blog-eq"], blog_bodies, args.blog_concurrency, d),
                        args.blog_concurrency),
            "rf-hf": ("2. rayfleet, backend transformers",
                      lambda d: run_load(f"{urls['rf-hf']}/translate", rf_bodies, args.concurrency, d),
                      args.concurrency),
            "rf-ct2": ("3. rayfleet, backend ctranslate2 (int8)",
                       lambda d: run_load(f"{urls['rf-ct2']}/translate", rf_bodies, args.concurrency, d),
                       args.concurrency),
            "ceiling": (f"4. in-process CTranslate2 int8 (ceiling: {ceiling_label})",
                        lambda d: run_ceiling(converted.path, sources, c_batch, c_intra, c_inter, d), None),
        }
        # Warm-up: every path once (first requests pay for lazy initialisation).
        for key in ("blog", "blog-eq", "rf-hf", "rf-ct2"):
            variants[key][1](0.1)
        results: dict[str, list[tuple[float, list[float], int]]] = {k: [] for k in variants}
        # /info answers from one replica: a mean batch size only means something with one replica.
        batching_before = {k: _stats(urls[k]) if args.replicas == 1 else None for k in urls}
        keys = list(variants)
        for r in range(rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)]   # rotates: no variant always goes first
            for key in order:
                label, fn, _ = variants[key]
                lat, elapsed, third = fn(duration)
                done = third if key == "ceiling" else len(lat)
                errors = 0 if key == "ceiling" else third
                results[key].append((done / elapsed, lat, errors))
                print(f"round {r + 1}/{rounds} {label}: {done / elapsed:.2f} sentences/s"
                      + (f" ({errors} errors)" if errors else ""), flush=True)
        batching_after = {k: _stats(urls[k]) if args.replicas == 1 else None for k in urls}
        args.ceiling_batch = c_batch
        report = _report(results, variants, batching_before, batching_after, cpu_model, args, rounds, duration)
        report["ceiling"] = {"batch": c_batch, "intra_threads": c_intra, "inter_threads": c_inter, "tried": tried}
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0
    finally:
        try:
            from rayfleet.cluster import local as _local

            _local.stop(directory=home)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _sources(model_dir: Path, sentences: list[str]) -> list[list[str]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.convert_ids_to_tokens(tokenizer(s)["input_ids"]) for s in sentences]


def _mean_batch(key: str, row: dict, batch: int) -> str:
    if key == "ceiling":
        return str(batch)
    if key.startswith("blog"):
        return "1 (no batching)"
    return f"{row['mean_batch']:.1f}" if "mean_batch" in row else "n/a (>1 replica)"


def _report(results, variants, before, after, cpu_model, args, rounds, duration) -> dict:
    rows = {}
    for key, (label, _, concurrency) in variants.items():
        rates = [rate for rate, _, _ in results[key]]
        latencies = [x for _, lat, _ in results[key] for x in lat]
        rows[key] = {
            "label": label, "concurrency": concurrency, "sentences_per_s": statistics.median(rates),
            "rounds": rates, "p50_s": _pct(latencies, 0.50), "p99_s": _pct(latencies, 0.99),
            "errors": sum(e for _, _, e in results[key]),
        }
        rows[key]["tokens_per_s"] = rows[key]["sentences_per_s"] * OUTPUT_TOKENS
        if key in before and before[key] is not None:
            batches = after[key]["batches"] - before[key]["batches"]
            rows[key]["mean_batch"] = (after[key]["texts"] - before[key]["texts"]) / batches if batches else 0.0
    print()
    print(f"CPU: {cpu_model}; {rounds} interleaved rounds x {duration:.0f} s per variant; "
          f"{SOURCE_IDS} source ids -> {OUTPUT_TOKENS} output tokens per sentence; median of rounds")
    print("| variant | clients | sentences/s | output tokens/s | p50 | p99 | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for key, row in rows.items():
        latency = "per batch: " if key == "ceiling" else ""
        print(f"| {row['label']} | {row['concurrency'] or '-'} | {row['sentences_per_s']:.2f} | "
              f"{row['tokens_per_s']:.0f} | {latency}{row['p50_s']:.2f} s | {latency}{row['p99_s']:.2f} s | "
              f"{_mean_batch(key, row, args.ceiling_batch)} |")
    ct2, ceiling, blog, blog_eq = (rows[k]["sentences_per_s"] for k in ("rf-ct2", "ceiling", "blog", "blog-eq"))
    ratios = {"served_vs_ceiling": ct2 / ceiling, "served_vs_blog_equal_cpu": ct2 / blog_eq,
              "served_vs_blog_1_replica": ct2 / blog}
    print()
    print(f"rayfleet ctranslate2 served / best in-process ceiling: {ratios['served_vs_ceiling']:.0%} "
          f"(target >= 90%: {'met' if ratios['served_vs_ceiling'] >= 0.9 else 'NOT met'})")
    print(f"rayfleet ctranslate2 served / blog-style with the same CPUs ({args.replicas} replicas): "
          f"{ratios['served_vs_blog_equal_cpu']:.1f}x "
          f"(target >= 30x: {'met' if ratios['served_vs_blog_equal_cpu'] >= 30 else 'NOT met'}); "
          f"vs 1 replica: {ratios['served_vs_blog_1_replica']:.1f}x")
    errors = sum(row["errors"] for row in rows.values())
    if errors:
        print(f"{errors} requests failed")
    return {"cpu": cpu_model, "rounds": rounds, "duration_s": duration, "rows": rows, "ratios": ratios}


if __name__ == "__main__":
    sys.exit(main())
