"""The interface every translation backend implements, and how one is chosen.

A backend is built once per replica (in the replica's ``__init__``) and then
called from a worker thread, one batch at a time, so the replica's event loop
stays free to form the next batch.

Contract for implementers:
- ``__init__`` loads the model or raises ``ModelError`` naming the model and the fix.
  It sets ``max_input_tokens`` and ``max_new_tokens`` from ``model_limits`` (the
  model's positions and generation config bound them; the spec may only lower them).
- ``translate(texts)`` is blocking, returns exactly one output per input, in
  input order; it is never called concurrently on the same instance. A text of
  more than ``max_input_tokens`` tokens is cut to that many (never an error):
  callers that must not lose text split it first (``serve/segment.py``).
- ``count_tokens(texts)`` is the number of source tokens of each text, ``</s>``
  included, as ``translate`` would feed them before any cut. Thread-safe with
  respect to ``translate`` only when the caller serialises the two (the replica
  calls both from its one model thread).
- ``info()`` is cheap and JSON-serialisable, and holds at least ``backend``,
  ``device`` and ``threads``.

Backends (service.yaml ``backend:``):
- ``transformers`` (``hf.py``): Hugging Face ``generate`` with PyTorch.
- ``ctranslate2`` (``ct2.py``): the model converted once per node to CTranslate2.
- ``auto``: ``ctranslate2`` when it can load the model, else ``transformers``
  with a warning (logger ``rayfleet.serve.backends``) that says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

__all__ = ["BackendSettings", "TranslationBackend", "ModelLimits", "model_limits", "count_tokens", "load_backend",
           "BACKEND_NAMES", "BackendName", "ComputeType", "Device", "COMPUTE_TYPES", "GPU_COMPUTE_TYPES"]

# The one list of backends, compute types and devices: service.yaml's fields and the CLI check against these.
BackendName = Literal["auto", "transformers", "ctranslate2"]
ComputeType = Literal["int8", "int8_float32", "float32", "int8_float16", "float16"]
Device = Literal["cpu", "cuda", "auto"]
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
COMPUTE_TYPES: tuple[str, ...] = get_args(ComputeType)
GPU_COMPUTE_TYPES = ("int8_float16", "float16")

# Under "ray.serve": in a replica, Serve's replica log (rayfleet services logs) holds these lines.
logger = logging.getLogger("ray.serve.rayfleet.backends")


@dataclass(frozen=True)
class BackendSettings:
    model: str
    device: str = "auto"          # cpu | cuda | auto
    num_threads: int = 1          # intra-op threads; from the replica's num_cpus
    num_beams: int = 1
    max_new_tokens: int = 256
    # ctranslate2 only:
    compute_type: str = "int8"    # int8 | int8_float32 | float32 | int8_float16 | float16 (the last two: GPU)
    inter_threads: int = 1        # batches CTranslate2 may run at once (sub-batches of one call)
    cache_dir: str | None = None  # converted models; default $RAYFLEET_HOME/ct2-cache
    max_batch_tokens: int = 4096  # one call is split, by length, into sub-batches of at most this many padded tokens


class TranslationBackend(Protocol):
    name: str
    max_input_tokens: int
    max_new_tokens: int
    output_tokens: int   # target tokens generated so far (</s> and padding not counted), for the metrics

    def translate(self, texts: list[str]) -> list[str]: ...

    def count_tokens(self, texts: list[str]) -> list[int]: ...

    def info(self) -> dict: ...


# A tokenizer without a model_max_length says 1e30 (transformers' VERY_LARGE_INTEGER): not a bound.
_NO_BOUND = 1_000_000


@dataclass(frozen=True)
class ModelLimits:
    """How long an input and an output of one model call may be, in tokens."""

    max_input_tokens: int   # source tokens, </s> included: the encoder's positions (or the tokenizer's bound)
    max_new_tokens: int     # generated tokens, a forced </s> included (transformers' meaning)


def _explicit_generation_settings(model_dir: Any) -> dict:
    """What the model's generation config sets itself (not transformers' defaults, e.g. max_length 20)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir).to_diff_dict()
    except (OSError, ValueError):
        return {}


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Source tokens of each text (``</s>`` included), uncut: how callers learn what needs splitting."""
    # Counting past the window is the point here: not transformers' "will result in indexing errors" warning.
    getattr(tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


def model_limits(model: str, config: Any, tokenizer: Any, model_dir: Any, requested_new_tokens: int) -> ModelLimits:
    """Bound the input by the encoder's positions, and the output by the decoder's positions and
    the model's own generation config (``max_length``/``max_new_tokens``). The spec's
    ``max_new_tokens`` may lower the output bound, never raise it; a cap is logged.

    ``config`` is the model's transformers config, ``model_dir`` where its generation config is.
    """
    positions = getattr(config, "max_position_embeddings", None) or _NO_BOUND
    tokenizer_bound = getattr(tokenizer, "model_max_length", None) or _NO_BOUND
    max_input = max(1, min(positions, tokenizer_bound if tokenizer_bound < _NO_BOUND else positions))
    bounds = {"the decoder's positions": positions - 1}  # step 0 feeds the start token at position 0
    gen = _explicit_generation_settings(model_dir)
    if isinstance(gen.get("max_length"), int):
        bounds["the generation config's max_length"] = gen["max_length"] - 1  # the start token counts
    if isinstance(gen.get("max_new_tokens"), int):
        bounds["the generation config's max_new_tokens"] = gen["max_new_tokens"]
    reason, bound = min(bounds.items(), key=lambda kv: kv[1])
    max_new = requested_new_tokens
    if bound < requested_new_tokens:
        max_new = max(1, bound)
        logger.warning("max_new_tokens %d is more than model %s allows (%s); using %d",
                       requested_new_tokens, model, reason, max_new)
    if max_input >= _NO_BOUND:
        max_input = 512
        logger.warning("model %s states no input length; inputs are cut at %d tokens", model, max_input)
    return ModelLimits(max_input_tokens=max_input, max_new_tokens=max_new)


def _transformers(settings: BackendSettings) -> TranslationBackend:
    from rayfleet.serve.backends.hf import TransformersBackend

    return TransformersBackend(settings)


def _ctranslate2(settings: BackendSettings) -> TranslationBackend:
    from rayfleet.serve.backends.ct2 import CTranslate2Backend

    return CTranslate2Backend(settings)


def _auto(settings: BackendSettings) -> TranslationBackend:
    """``ctranslate2`` when it can load the model here, else ``transformers`` (logged)."""
    try:
        from rayfleet.serve.backends.ct2 import gpu_only_for_torch

        reason = gpu_only_for_torch(settings.device)
        if reason is None:
            return _ctranslate2(settings)
    except Exception as e:  # noqa: BLE001 - any failure means "can't load": say why, then fall back
        reason = f"{type(e).__name__}: {e}"
    logger.warning("backend auto: using transformers for %s because ctranslate2 can't load it (%s)",
                   settings.model, reason)
    return _transformers(settings)


def load_backend(name: str, settings: BackendSettings) -> TranslationBackend:
    """Build the backend called ``name`` (as in service.yaml's ``backend:``).

    ``auto`` never fails because of CTranslate2: it logs why and uses transformers.
    """
    if name == "transformers":
        return _transformers(settings)
    if name == "ctranslate2":
        return _ctranslate2(settings)
    if name == "auto":
        return _auto(settings)
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
