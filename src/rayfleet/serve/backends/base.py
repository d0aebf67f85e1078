"""The interface every translation backend implements, and how one is chosen.

A backend is built once per replica (in the replica's ``__init__``) and then
called from a worker thread, one batch at a time, so the replica's event loop
stays free to form the next batch.

Contract for implementers:
- ``__init__`` loads the model or raises ``ModelError`` naming the model and the fix.
- ``translate(texts)`` is blocking, returns exactly one output per input, in
  input order; it is never called concurrently on the same instance.
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
from typing import Protocol

__all__ = ["BackendSettings", "TranslationBackend", "load_backend", "BACKEND_NAMES"]

BACKEND_NAMES = ("auto", "transformers", "ctranslate2")

logger = logging.getLogger("rayfleet.serve.backends")


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

    def translate(self, texts: list[str]) -> list[str]: ...

    def info(self) -> dict: ...


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
