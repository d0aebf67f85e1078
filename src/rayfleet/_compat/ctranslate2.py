"""CTranslate2's converter, with hooks on the loaded model and on the spec before it is saved.

``TransformersConverter.load_model`` is public; the spec, though, is only reachable through
the private ``_load`` (``Converter.convert`` calls it, then validates, quantizes and saves).
"""

from __future__ import annotations

from typing import Callable

from rayfleet._compat import require

require("ctranslate2", __name__)

__all__ = ["convert"]


def convert(model_dir: str, out_dir: str, *, quantization: str | None, on_model: Callable | None = None,
            on_spec: Callable | None = None) -> None:
    """Convert a Transformers model dir with ``ctranslate2.converters.TransformersConverter``;
    ``on_model(model)`` runs on the loaded PyTorch model, ``on_spec(spec)`` on the converted spec
    before CTranslate2 quantizes (``quantization``) and saves it."""
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            if on_model is not None:
                on_model(model)
            return model

        def _load(self):
            spec = super()._load()
            if on_spec is not None:
                on_spec(spec)
            return spec

    _Converter(model_dir).convert(out_dir, quantization=quantization, force=True)
