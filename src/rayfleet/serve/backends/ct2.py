"""Backend ``ctranslate2``: the Hugging Face model converted to CTranslate2.

The model (local directory or hub id) is converted once per node and cached in
``$RAYFLEET_HOME/ct2-cache`` (or ``BackendSettings.cache_dir``) under a key made
of the model files' contents and the conversion options, so every replica on a
node, and every later deploy, loads the converted copy. Replicas that start
together take a file lock: one converts into a temporary directory and renames
it into place; the others wait and load the result.

What this backend guarantees (tested on the tiny MarianMT):
- ``compute_type: float32`` reproduces transformers' greedy output token for
  token. Two details make that true for any MarianMT, not only opus-mt:
  CTranslate2 starts Marian's decoder from a zero embedding, which equals
  transformers only when the decoder start (``<pad>``) embedding is zero, so the
  start embedding is folded into decoder position 0 at conversion; and the
  generation config's ``forced_eos_token_id``/``min_new_tokens`` map onto
  CTranslate2's decoding lengths.
- ``int8`` agrees with transformers on at least 95 % of the tokens. x86 CPUs
  without VNNI multiply int8 with ``vpmaddubsw``, whose 16-bit sums saturate
  with 8-bit weights (CTranslate2's DNNL GEMM on AMD/AVX2: 92.5 % agreement on
  the tiny model); there, weights are quantized to 7 bits (99.8 %), at the same
  speed. The cache key holds the choice.

Texts of one call are sorted by length and split into sub-batches of at most
``max_batch_tokens`` padded tokens (CTranslate2's token batching), so short
texts are not padded to the longest one of a large batch.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import ctranslate2

from rayfleet.errors import ModelError
from rayfleet.serve.backends.base import (COMPUTE_TYPES, GPU_COMPUTE_TYPES, BackendSettings, count_tokens,
                                          model_limits)

__all__ = [
    "CTranslate2Backend",
    "ConvertedModel",
    "convert_cached",
    "default_cache_dir",
    "int8_weight_bits",
    "gpu_only_for_torch",
]


# Under "ray.serve": in a replica, Serve's replica log (rayfleet services logs) holds these lines.
logger = logging.getLogger("ray.serve.rayfleet.backends")

# Bump when the conversion changes (the start-embedding fold, the 7-bit quantization):
# old cache entries then stop matching instead of being loaded with new semantics.
_CACHE_FORMAT = 1
_HASHED_SUFFIXES = {".json", ".safetensors", ".bin", ".spm", ".model", ".txt", ".vocab"}
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.spm", "*.model", "*.txt", "*.vocab", "pytorch_model*.bin"]
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
_HINT = "Set 'backend: transformers' in service.yaml to serve without CTranslate2."


@dataclass(frozen=True)
class ConvertedModel:
    """A converted model in the cache. ``converted`` is False when it was already there."""

    path: Path
    key: str
    converted: bool
    seconds: float
    source: Path  # the model's own files (the directory, or the hub snapshot)


def default_cache_dir() -> Path:
    from rayfleet.cluster.state import state_dir

    return state_dir() / "ct2-cache"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def int8_weight_bits(device: str) -> int:
    """8, or 7 on x86 CPUs without VNNI, whose int8 GEMM saturates 16-bit sums with 8-bit weights."""
    if device != "cpu" or platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return 8
    return 8 if _cpu_flags() & _VNNI_FLAGS else 7


def gpu_only_for_torch(device: str) -> str | None:
    """Why ``auto`` should not pick CTranslate2 here: torch sees a GPU that CTranslate2 can't use."""
    if device == "cpu" or ctranslate2.get_cuda_device_count() > 0:
        return None
    import torch

    if torch.cuda.is_available():
        return "this CTranslate2 build sees no CUDA GPU, but PyTorch does"
    return None


def _pick_device(device: str) -> str:
    cuda = ctranslate2.get_cuda_device_count() > 0
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if device == "cuda" and not cuda:
        raise ModelError("device is 'cuda' but CTranslate2 sees no CUDA GPU in this replica.",
                         hint="Set device: cpu (or auto), or give the replica num_gpus: 1.")
    return device


def _check_compute_type(compute_type: str, device: str) -> None:
    supported = sorted(ctranslate2.get_supported_compute_types(device))
    if compute_type not in supported:
        gpu = " (float16 types need a GPU: device: cuda)" if compute_type in GPU_COMPUTE_TYPES else ""
        raise ModelError(
            f"Got {compute_type!r} for ctranslate2.compute_type; on {device} this machine supports "
            f"{', '.join(supported)}{gpu}.",
            hint="Set ctranslate2.compute_type to one of those in service.yaml (int8 is the fast default on CPU).")


def _local_model_dir(model: str) -> Path:
    """The directory that holds ``model``'s files: the path itself, or the hub snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (the exception type varies by version): try the hub
        pass
    from rayfleet.serve.models import hub_offline

    if hub_offline():
        raise ModelError(f"Model {model!r} is not a directory nor in the Hugging Face cache (HF_HUB_OFFLINE is set).",
                         hint="Pass a local directory saved with save_pretrained, e.g. --model /path/to/opus-mt-en-fr")
    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 - network and hub errors of every kind
        raise ModelError(f"Could not fetch model {model!r}: {e}",
                         hint="Pass a local directory saved with save_pretrained, e.g. --model /path/to/opus-mt-en-fr") from e


def _model_files(model_dir: Path) -> list[Path]:
    """What transformers loads: config, tokenizer and weights (safetensors over .bin)."""
    files = sorted(p for p in model_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix in _HASHED_SUFFIXES)
    if any(p.suffix == ".safetensors" for p in files):
        files = [p for p in files if not p.name.startswith("pytorch_model")]
    if not any(p.name == "config.json" for p in files):
        raise ModelError(f"{str(model_dir)!r} is not a model directory (no config.json in it).",
                         hint="Pass a directory saved with save_pretrained (config.json, tokenizer files, weights).")
    return files


def _digest(model_dir: Path, options: dict) -> str:
    from rayfleet.serve.models import files_digest

    return files_digest(_model_files(model_dir), model_dir, json.dumps(options, sort_keys=True).encode())


def _fold_decoder_start(model) -> None:
    """Make a MarianMT exact under CTranslate2's zero start embedding.

    transformers feeds ``embed(decoder_start) * scale + pos[0]`` at step 0;
    CTranslate2 feeds ``0 + pos[0]``. Position 0 is used by that step only, so
    adding the start embedding to ``pos[0]`` gives the same numbers. opus-mt's
    start embedding is zero already (then this changes nothing).
    """
    import torch

    if getattr(model.config, "model_type", None) != "marian":
        return
    decoder = model.get_decoder()
    scale = getattr(decoder, "embed_scale", math.sqrt(model.config.d_model) if model.config.scale_embedding else 1.0)
    start = decoder.embed_tokens.weight[model.config.decoder_start_token_id].detach() * scale
    if not torch.any(start):
        return
    positions = decoder.embed_positions.weight.detach().clone()
    positions[0] += start
    decoder.embed_positions.weight = torch.nn.Parameter(positions, requires_grad=False)


def _quantize_int8(spec, qmax: int) -> None:
    """CTranslate2's per-row int8 weight quantization, with ``qmax`` (63 = 7 bits) as the largest value."""
    import numpy as np
    from ctranslate2.specs import model_spec

    def visit(layer, name, value):
        key = name.rsplit("/", 1)[-1]
        if (not isinstance(value, model_spec.Variable) or value.is_scalar()
                or not hasattr(layer, f"{key}_scale")):
            return
        weight = value.to("float32").numpy()
        rows = weight.reshape(weight.shape[0], -1)
        amax = np.abs(rows).max(axis=1)
        amax = np.where(amax == 0, np.float32(qmax), amax)
        scale = (np.float32(qmax) / amax).astype(np.float32)
        quantized = np.rint(rows * scale[:, None]).astype(np.int8).reshape(weight.shape)
        setattr(layer, key, model_spec.NumpyVariable(quantized))
        setattr(layer, f"{key}_scale", model_spec.NumpyVariable(scale))

    model_spec.visit_spec(spec, visit)


def _convert(model_dir: Path, out_dir: Path, quantization: str, weight_bits: int) -> None:
    from transformers.utils import logging as hf_logging

    from rayfleet._compat.ctranslate2 import convert

    own_int8 = quantization in ("int8", "int8_float32") and weight_bits < 8

    def quantize(spec) -> None:
        spec.validate()
        _quantize_int8(spec, 2 ** (weight_bits - 1) - 1)

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the replica's log
    try:
        convert(str(model_dir), str(out_dir), quantization=None if own_int8 else quantization,
                on_model=_fold_decoder_start, on_spec=quantize if own_int8 else None)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def convert_cached(model: str, quantization: str, *, weight_bits: int = 8,
                   cache_dir: str | Path | None = None) -> ConvertedModel:
    """Convert ``model`` unless the cache has it; return where the converted model is.

    Safe to call from several processes at once: one converts, the others wait
    on the lock and then find it. A failed or killed conversion leaves no entry.
    Raises ModelError when the model can't be found or converted.
    """
    model_dir = _local_model_dir(model)
    options = {"quantization": quantization, "weight_bits": weight_bits, "format": _CACHE_FORMAT,
               "ctranslate2": ctranslate2.__version__}
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name or "model")[-40:]
    key = f"{slug}-{quantization}-{_digest(model_dir, options)[:20]}"
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    final = root / key
    if (final / "model.bin").is_file():
        return ConvertedModel(final, key, converted=False, seconds=0.0, source=model_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{key}.lock", "a+")
    except OSError as e:
        raise ModelError(f"Can't write the CTranslate2 cache {root}: {e}",
                         hint="Make it writable, or set RAYFLEET_HOME to a writable directory.") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if (final / "model.bin").is_file():
            return ConvertedModel(final, key, converted=False, seconds=0.0, source=model_dir)
        for stale in root.glob(f".{key}.tmp-*"):  # left by a converter that died (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{key}.tmp-{os.getpid()}"
        t0 = time.perf_counter()
        try:
            _convert(model_dir, tmp, quantization, weight_bits)
            (tmp / "rayfleet.json").write_text(json.dumps({"model": model, "source": str(model_dir), **options}))
            os.rename(tmp, final)
        except Exception as e:  # noqa: BLE001 - the converter raises ValueError, OSError, RuntimeError, ...
            raise ModelError(f"CTranslate2 can't convert model {model!r}: {type(e).__name__}: {e}",
                             hint=_HINT) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    logger.info("converted %s to CTranslate2 %s in %.1f s: %s", model, quantization, seconds, final)
    return ConvertedModel(final, key, converted=True, seconds=seconds, source=model_dir)


def _decoding_lengths(model_dir: Path, max_new_tokens: int) -> tuple[int, int]:
    """(min, max) decoding lengths that match transformers' ``generate`` for this model.

    ``max_new_tokens`` is already bounded by ``model_limits``. With ``forced_eos_token_id``
    set (opus-mt), transformers spends the last of ``max_new_tokens`` on ``</s>``;
    CTranslate2 counts only the other tokens.
    """
    from transformers import AutoConfig, GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))
    longest = max_new_tokens - (1 if gen.forced_eos_token_id is not None else 0)
    shortest = max(gen.min_new_tokens or 0, (gen.min_length or 0) - 1, 0)
    return min(shortest, longest), longest


class CTranslate2Backend:
    """CTranslate2 ``Translator`` on the cached conversion; HF tokenizer in front of it."""

    name = "ctranslate2"
    output_tokens = 0

    def __init__(self, settings: BackendSettings):
        from transformers import AutoTokenizer

        self.settings = settings
        self.device = _pick_device(settings.device)
        if settings.compute_type not in COMPUTE_TYPES:
            raise ModelError(f"Got {settings.compute_type!r} for ctranslate2.compute_type; "
                             f"expected one of {', '.join(COMPUTE_TYPES)}.")
        _check_compute_type(settings.compute_type, self.device)
        self.weight_bits = int8_weight_bits(self.device) if "int8" in settings.compute_type else None
        self.cached = convert_cached(settings.model, settings.compute_type, weight_bits=self.weight_bits or 8,
                                     cache_dir=settings.cache_dir)
        try:
            from transformers import AutoConfig

            self.tokenizer = AutoTokenizer.from_pretrained(self.cached.source)
            # CTranslate2 decodes past the decoder's positions with a RuntimeError: bound it as transformers is.
            limits = model_limits(settings.model, AutoConfig.from_pretrained(self.cached.source), self.tokenizer,
                                  self.cached.source, settings.max_new_tokens)
            self.max_input_tokens = limits.max_input_tokens
            self.max_new_tokens = limits.max_new_tokens
            self._min_len, self._max_len = _decoding_lengths(self.cached.source, self.max_new_tokens)
            self.translator = ctranslate2.Translator(
                str(self.cached.path), device=self.device, compute_type=settings.compute_type,
                intra_threads=max(1, settings.num_threads), inter_threads=max(1, settings.inter_threads))
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"Could not load model {settings.model!r} with CTranslate2: {e}", hint=_HINT) from e

    def translate_tokens(self, texts: list[str]) -> list[list[str]]:
        """Target tokens (no ``</s>``) for each text, in input order. Blocking."""
        if not texts or self._max_len <= 0:  # max_len 0: only the forced </s> fits (transformers: "")
            return [[] for _ in texts]
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_input_tokens)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        results = self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(ids[i]) for i in order],
            max_batch_size=self.settings.max_batch_tokens, batch_type="tokens",
            beam_size=self.settings.num_beams, max_input_length=0,
            max_decoding_length=self._max_len, min_decoding_length=self._min_len,
            return_scores=False,
        )
        out: list[list[str]] = [[] for _ in texts]
        for position, i in enumerate(order):
            out[i] = results[position].hypotheses[0]
        self.output_tokens += sum(map(len, out))
        return out

    def count_tokens(self, texts: list[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def translate(self, texts: list[str]) -> list[str]:
        tokens = self.translate_tokens(texts)
        return self.tokenizer.batch_decode([self.tokenizer.convert_tokens_to_ids(t) for t in tokens],
                                           skip_special_tokens=True)

    def info(self) -> dict:
        return {
            "backend": self.name,
            "device": self.device,
            "threads": max(1, self.settings.num_threads),
            "max_input_tokens": self.max_input_tokens,
            "max_new_tokens": self.max_new_tokens,
            "inter_threads": self.settings.inter_threads,
            "compute_type": self.settings.compute_type,
            "int8_weight_bits": self.weight_bits,
            "converted_model": str(self.cached.path),
            "conversion_s": round(self.cached.seconds, 2),
        }
