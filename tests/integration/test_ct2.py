"""The ctranslate2 backend: parity with transformers, the conversion cache, ``auto``, and serving.

Parity and cache tests run in-process (no Ray); one test serves the tiny model
over HTTP on the session cluster with ``backend: auto``.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import sys
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from rayfleet.errors import ModelError
from rayfleet.serve.backends.base import BackendSettings, load_backend
from rayfleet.testing.tiny_model import SAMPLE_TEXTS

# Every test here but the served one needs no Ray: unit; the served one: integration.


@pytest.fixture(scope="module")
def hf_tokens(tiny_model):
    """transformers' greedy tokens, one text at a time (no padding), for a max_new_tokens."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model).eval()
    cache: dict[int, dict[str, list[str]]] = {}

    def run(max_new_tokens: int) -> dict[str, list[str]]:
        if max_new_tokens not in cache:
            out = {}
            for text in SAMPLE_TEXTS:
                with torch.inference_mode():
                    ids = model.generate(**tok([text], return_tensors="pt"), num_beams=1, do_sample=False,
                                         max_new_tokens=max_new_tokens)
                generated = ids[0].tolist()[1:]  # after the decoder start token
                if generated and generated[-1] == tok.eos_token_id:
                    generated = generated[:-1]
                out[text] = tok.convert_ids_to_tokens(generated)
            cache[max_new_tokens] = out
        return cache[max_new_tokens]

    return run


@pytest.fixture(scope="module")
def hf_texts(tiny_model):
    backend = load_backend("transformers", BackendSettings(model=str(tiny_model), max_new_tokens=32))
    return {t: backend.translate([t])[0] for t in SAMPLE_TEXTS}


def _ct2(tiny_model: Path, cache: Path, **kw):
    settings = BackendSettings(model=str(tiny_model), cache_dir=str(cache), **{"max_new_tokens": 32, **kw})
    return load_backend("ctranslate2", settings)


@pytest.mark.parametrize("max_new_tokens", [32, 6])
@pytest.mark.unit
def test_float32_greedy_equals_transformers_token_for_token(tiny_model, tmp_path, hf_tokens, max_new_tokens):
    backend = _ct2(tiny_model, tmp_path, compute_type="float32", max_new_tokens=max_new_tokens)
    assert backend.name == "ctranslate2"
    got = backend.translate_tokens(SAMPLE_TEXTS)  # one call: a padded batch of 40 mixed lengths
    want = hf_tokens(max_new_tokens)
    assert got == [want[t] for t in SAMPLE_TEXTS]


@pytest.mark.unit
def test_both_backends_count_the_tokens_they_generate(tiny_model, tmp_path, hf_tokens):
    """What the replica's output-tokens metric counts: target tokens, </s> and padding not counted."""
    ref = hf_tokens(32)
    want = sum(len(ref[t]) for t in SAMPLE_TEXTS)
    ct2 = _ct2(tiny_model, tmp_path, compute_type="float32")
    ct2.translate(SAMPLE_TEXTS)   # one padded batch
    hf = load_backend("transformers", BackendSettings(model=str(tiny_model), max_new_tokens=32))
    for t in SAMPLE_TEXTS:        # one at a time: greedy results equal to the reference's
        hf.translate([t])
    assert want > len(SAMPLE_TEXTS) and ct2.output_tokens == want and hf.output_tokens == want


@pytest.mark.unit
def test_float32_texts_equal_transformers_backend(tiny_model, tmp_path, hf_texts):
    backend = _ct2(tiny_model, tmp_path, compute_type="float32")
    assert backend.translate(SAMPLE_TEXTS) == [hf_texts[t] for t in SAMPLE_TEXTS]


@pytest.mark.unit
def test_int8_agrees_on_95_percent_of_tokens(tiny_model, tmp_path, hf_tokens):
    backend = _ct2(tiny_model, tmp_path, compute_type="int8")
    assert backend.info()["int8_weight_bits"] in (7, 8)
    got = backend.translate_tokens(SAMPLE_TEXTS)
    want = hf_tokens(32)
    same = total = 0
    for text, tokens in zip(SAMPLE_TEXTS, got):
        ref = want[text]
        total += max(len(ref), len(tokens))
        same += sum(a == b for a, b in zip(ref, tokens))
    print(f"int8 vs transformers: {same}/{total} tokens agree ({same / total:.1%})")
    assert same / total >= 0.95


@pytest.mark.unit
def test_length_grouping_keeps_input_order(tiny_model, tmp_path, hf_texts):
    """A token budget far below the batch forces sub-batches sorted by length; outputs stay in input order."""
    backend = _ct2(tiny_model, tmp_path, compute_type="float32", max_batch_tokens=48)
    texts = [SAMPLE_TEXTS[i] + (" Today." * (i % 4)) for i in range(24)]
    whole = _ct2(tiny_model, tmp_path, compute_type="float32").translate(texts)
    assert backend.translate(texts) == whole
    assert backend.translate([texts[5]]) == [whole[5]]
    assert backend.translate([]) == []


def _convert_in_child(args):
    from rayfleet.serve.backends.ct2 import convert_cached

    model, cache = args
    result = convert_cached(model, "int8", weight_bits=8, cache_dir=cache)
    return str(result.path), result.converted


@pytest.mark.unit
def test_two_processes_convert_once(tiny_model, tmp_path):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_convert_in_child, [(str(tiny_model), str(cache))] * 2)
    assert results[0][0] == results[1][0]
    assert sorted(converted for _, converted in results) == [False, True]
    entries = sorted(p.name for p in cache.iterdir())
    key = Path(results[0][0]).name
    assert entries == [key, f"{key}.lock"]  # no temporary directory is left behind
    assert (cache / key / "model.bin").is_file()


@pytest.mark.unit
def test_cache_key_follows_contents_and_options(tiny_model, tmp_path):
    from rayfleet.serve.backends.ct2 import convert_cached

    cache = tmp_path / "cache"
    first = convert_cached(str(tiny_model), "int8", cache_dir=cache)
    again = convert_cached(str(tiny_model), "int8", cache_dir=cache)
    assert (again.path, again.converted) == (first.path, False)
    assert convert_cached(str(tiny_model), "float32", cache_dir=cache).path != first.path
    assert convert_cached(str(tiny_model), "int8", weight_bits=7, cache_dir=cache).path != first.path
    copy = tmp_path / "copy" / tiny_model.name
    shutil.copytree(tiny_model, copy)
    assert convert_cached(str(copy), "int8", cache_dir=cache).path == first.path  # same files, same key
    (copy / "generation_config.json").write_text(
        (copy / "generation_config.json").read_text().replace('"max_length": 32', '"max_length": 31'))
    assert convert_cached(str(copy), "int8", cache_dir=cache).path != first.path


@pytest.mark.unit
def test_default_cache_is_under_rayfleet_home(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path / "home"))
    backend = load_backend("ctranslate2", BackendSettings(model=str(tiny_model), max_new_tokens=8))
    assert Path(backend.info()["converted_model"]).parent == tmp_path / "home" / "ct2-cache"


@pytest.mark.unit
def test_explicit_ctranslate2_reports_unsupported_compute_type(tiny_model, tmp_path):
    with pytest.raises(ModelError) as e:
        _ct2(tiny_model, tmp_path, compute_type="float16", device="cpu")
    assert e.value.message.startswith("Got 'float16' for ctranslate2.compute_type; on cpu this machine supports ")
    assert "need a GPU" in e.value.message
    assert e.value.hint


@pytest.mark.unit
def test_auto_picks_ctranslate2(tiny_model, tmp_path):
    backend = load_backend("auto", BackendSettings(model=str(tiny_model), cache_dir=str(tmp_path), max_new_tokens=8))
    assert backend.name == "ctranslate2"
    assert backend.info()["compute_type"] == "int8"


@pytest.mark.unit
def test_auto_falls_back_with_a_log_line_when_ct2_cannot_load(tiny_model, tmp_path, caplog):
    settings = BackendSettings(model=str(tiny_model), cache_dir=str(tmp_path), device="cpu", compute_type="float16",
                               max_new_tokens=8)
    with caplog.at_level(logging.WARNING, logger="ray.serve.rayfleet.backends"):
        backend = load_backend("auto", settings)
    assert backend.name == "transformers"
    [record] = [r for r in caplog.records if r.name == "ray.serve.rayfleet.backends"]
    assert record.getMessage().startswith(f"backend auto: using transformers for {tiny_model} because "
                                          "ctranslate2 can't load it (ModelError: Got 'float16'")


@pytest.mark.unit
def test_auto_falls_back_when_ctranslate2_is_not_installed(tiny_model, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 -> ImportError
    monkeypatch.delitem(sys.modules, "rayfleet.serve.backends.ct2", raising=False)
    with caplog.at_level(logging.WARNING, logger="ray.serve.rayfleet.backends"):
        backend = load_backend("auto", BackendSettings(model=str(tiny_model), cache_dir=str(tmp_path)))
    assert backend.name == "transformers"
    assert "ModuleNotFoundError" in caplog.text or "ImportError" in caplog.text
    monkeypatch.undo()
    assert load_backend("auto", BackendSettings(model=str(tiny_model), cache_dir=str(tmp_path))).name == "ctranslate2"


@pytest.mark.integration
def test_served_auto_backend_is_ctranslate2_and_equals_transformers(serve_target, tiny_model, hf_texts):
    """backend: auto on a CPU replica pair: ctranslate2, converted once for the node."""
    from rayfleet.cluster.state import state_dir
    from rayfleet.config.service import ServiceSpec
    from rayfleet.serve.deploy import delete_service, deploy

    spec = ServiceSpec(name="ct2", route_prefix="/ct2", model=str(tiny_model), replicas=2, backend="auto",
                       ctranslate2={"compute_type": "float32"}, generation={"max_new_tokens": 32},
                       batching={"max_batch_size": 16, "batch_wait_timeout_s": 0.05})
    status = deploy(serve_target, spec, [], timeout_s=300)
    try:
        info = httpx.get(f"{status.url}/info", timeout=30).json()
        assert (info["backend"], info["compute_type"], info["device"]) == ("ctranslate2", "float32", "cpu")
        texts = SAMPLE_TEXTS[:12]
        r = httpx.post(f"{status.url}/translate", json={"texts": texts}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json() == {"translations": [hf_texts[t] for t in texts]}
        r = httpx.post(f"{status.url}/translate", json={"text": SAMPLE_TEXTS[20]}, timeout=120)
        assert r.json() == {"translation": hf_texts[SAMPLE_TEXTS[20]]}
        cache = state_dir() / "ct2-cache"
        converted = [p.name for p in cache.iterdir() if p.name.startswith(f"{tiny_model.name}-float32-")]
        assert len(converted) == 2  # one model directory and its lock file: two replicas, one conversion
        assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    finally:
        delete_service(serve_target, spec.name, wait=False)


@pytest.mark.unit
def test_service_yaml_keys(tmp_path):
    from rayfleet.config.loader import load_model
    from rayfleet.config.service import ServiceSpec
    from rayfleet.errors import ConfigError

    default = ServiceSpec()
    assert (default.backend, default.ctranslate2.compute_type, default.ctranslate2.inter_threads) == ("auto", "int8", 1)
    p = tmp_path / "s.yaml"
    p.write_text("backend: ctranslate2\nctranslate2: {compute_type: float32, inter_threads: 2}\n")
    spec = load_model(ServiceSpec, p)
    assert (spec.backend, spec.ctranslate2.compute_type, spec.ctranslate2.inter_threads) == ("ctranslate2", "float32", 2)
    p.write_text("ctranslate2:\n  compute_type: int4\n")
    with pytest.raises(ConfigError) as e:
        load_model(ServiceSpec, p)
    assert "ctranslate2.compute_type: got 'int4'" in str(e.value)
