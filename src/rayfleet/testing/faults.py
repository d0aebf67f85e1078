"""Fault injection for tests: backend wrappers (``Translator``'s ``backend_wrapper``).

``fail_on_marker`` wraps a backend so that any model call whose inputs hold
``FAIL_MARKER`` raises, as a model that can't handle one input would: the rest of
the batch must still be translated.
"""

from __future__ import annotations

__all__ = ["FAIL_MARKER", "fail_on_marker"]

FAIL_MARKER = "[[rayfleet-test-fail]]"


class _FailOnMarker:
    def __init__(self, backend):
        self._backend = backend
        self.name = backend.name
        self.max_input_tokens = backend.max_input_tokens
        self.max_new_tokens = backend.max_new_tokens

    def translate(self, texts: list[str]) -> list[str]:
        if any(FAIL_MARKER in t for t in texts):
            raise RuntimeError(f"injected failure: an input holds {FAIL_MARKER}")
        return self._backend.translate(texts)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self._backend.count_tokens(texts)

    def info(self) -> dict:
        return {**self._backend.info(), "fault": "fail_on_marker"}


def fail_on_marker(backend):
    """``backend_wrapper: rayfleet.testing.faults:fail_on_marker``."""
    return _FailOnMarker(backend)
