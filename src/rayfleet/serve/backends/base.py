"""The interface every translation backend implements.

A backend is built once per replica (in the replica's ``__init__``) and then
called from a worker thread, one batch at a time, so the replica's event loop
stays free to form the next batch.

Contract for implementers:
- ``__init__`` loads the model or raises ``ModelError`` naming the model and the fix.
- ``translate(texts)`` is blocking, returns exactly one output per input, in
  input order; it is never called concurrently on the same instance.
- ``info()`` is cheap and JSON-serialisable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["BackendSettings", "TranslationBackend", "load_backend"]


@dataclass(frozen=True)
class BackendSettings:
    model: str
    device: str = "auto"          # cpu | cuda | auto
    num_threads: int = 1          # intra-op threads; from the replica's num_cpus
    num_beams: int = 1
    max_new_tokens: int = 256


class TranslationBackend(Protocol):
    name: str

    def translate(self, texts: list[str]) -> list[str]: ...

    def info(self) -> dict: ...


def load_backend(name: str, settings: BackendSettings) -> TranslationBackend:
    """Build the backend called ``name`` (as in service.yaml's ``backend:``)."""
    if name == "transformers":
        from rayfleet.serve.backends.hf import TransformersBackend

        return TransformersBackend(settings)
    raise ValueError(f"unknown backend {name!r}")
