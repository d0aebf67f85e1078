"""The Ray Data UDF of ``translate-file``: one translator actor of the pool.

``ChunkTranslator`` is a callable class, so Ray Data runs it as an actor pool
(``map_batches(..., compute=ActorPoolStrategy(...))``): the model is loaded
once per actor, with the same backends as the translation service and the same
``TextTranslator`` (long texts split into sentences; a model failure stays with
its line). Each call gets a batch of chunk rows (see ``plan.Chunk``), reads those
byte ranges of the input itself (the input is on storage every node sees), checks
every line, translates the good ones in model batches of ``batch_size`` inputs,
and returns one row per input line: ``part``, ``line`` (1-based), ``output`` (the
output JSON line, or "" for a bad line) and ``error`` ("" for a good line).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rayfleet.bulk.plan import check_line, output_line
from rayfleet.serve.segment import Failed

__all__ = ["ChunkTranslator"]


class ChunkTranslator:
    def __init__(self, *, input_path: str, field: str, output_field: str, backend: str,
                 settings: dict[str, Any], batch_size: int):
        from rayfleet.serve.backends.base import BackendSettings, load_backend
        from rayfleet.serve.segment import TextTranslator

        self.input_path = input_path
        self.field = field
        self.output_field = output_field
        self.translator = TextTranslator(load_backend(backend, BackendSettings(**settings)),
                                         max_batch_size=batch_size)

    def _read(self, start: int, end: int, count: int) -> list[bytes]:
        with open(self.input_path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        if len(lines) != count:  # the file changed under us: never write misaligned output
            raise RuntimeError(f"{self.input_path} changed while it was being translated: expected {count} "
                               f"lines at bytes {start}-{end}, found {len(lines)}")
        return lines

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        parts: list[int] = []
        numbers: list[int] = []
        outputs: list[str] = []
        errors: list[str] = []
        good: list[tuple[int, dict]] = []   # (row index, object)
        texts: list[str] = []
        for part, first, count, start, end in zip(batch["part"], batch["first"], batch["count"],
                                                  batch["start"], batch["end"]):
            for j, raw in enumerate(self._read(int(start), int(end), int(count))):
                obj, text, reason = check_line(raw, self.field)
                parts.append(int(part))
                numbers.append(int(first) + j + 1)
                outputs.append("")
                errors.append(reason or "")
                if reason is None:
                    good.append((len(outputs) - 1, obj))
                    texts.append(text)
        for (row, obj), outcome in zip(good, self.translator.translate(texts) if texts else []):
            if isinstance(outcome, Failed):
                errors[row] = f"the model failed on this line: {outcome.reason}"
            else:
                outputs[row] = output_line(obj, self.output_field, outcome.text)
        return pa.table({"part": pa.array(parts, pa.int64()), "line": pa.array(numbers, pa.int64()),
                         "output": pa.array(outputs, pa.string()), "error": pa.array(errors, pa.string())})
