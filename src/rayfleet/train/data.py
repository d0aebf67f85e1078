"""Parallel data files: checking them on the client, reading them in the driver or with Ray Data.

Two formats, chosen by the file name: ``.jsonl`` (one ``{"en": ..., "fr": ...}``
object per line) and anything else as TSV (``english<TAB>french`` per line; a
first line ``en<TAB>fr`` is a header and skipped). Blank lines are ignored.

``check_file`` runs on the client before a job is submitted, so a missing,
empty or malformed file is one clear error naming the file and line, not a
failed job. ``parse_line`` is the one parser both sides use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayfleet.errors import DataError

__all__ = ["file_format", "parse_line", "check_file", "read_pairs", "tokenized_dataset", "text_dataset",
           "ingest_in_driver", "tokenized_pairs", "DRIVER_MAX_BYTES"]

_CHECK_LINES = 100_000  # the client checks this many lines; the workload checks all of them
_HINT_TSV = "Each line needs two tab-separated columns: english<TAB>french."
_HINT_JSONL = 'Each line needs a JSON object with string fields "en" and "fr".'


def file_format(path: str | Path) -> str:
    return "jsonl" if str(path).endswith((".jsonl", ".json")) else "tsv"


def parse_line(line: str, fmt: str, where: str) -> tuple[str, str] | None:
    """(en, fr) for a data line, None for a blank line or a TSV header; DataError otherwise."""
    line = line.rstrip("\n").rstrip("\r")
    if not line.strip():
        return None
    if fmt == "jsonl":
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}).", hint=_HINT_JSONL) from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}.", hint=_HINT_JSONL)
        missing = [k for k in ("en", "fr") if not isinstance(obj.get(k), str)]
        if missing:
            keys = ", ".join(sorted(map(str, obj))) or "none"
            raise DataError(f"{where}: missing string field(s) {', '.join(missing)} (keys found: {keys}).",
                            hint=_HINT_JSONL)
        en, fr = obj["en"].strip(), obj["fr"].strip()
    else:
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(f"{where}: expected 2 tab-separated columns (en, fr), got {len(cols)}.",
                            hint=_HINT_TSV)
        en, fr = cols[0].strip(), cols[1].strip()
        if (en.lower(), fr.lower()) == ("en", "fr"):
            return None
    if not en or not fr:
        raise DataError(f"{where}: empty {'en' if not en else 'fr'} text.",
                        hint=_HINT_JSONL if fmt == "jsonl" else _HINT_TSV)
    return en, fr


def _open(path: Path, role: str):
    try:
        return path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"The {role} file {path} does not exist.",
                        hint=f"Fix data.{role} in the job spec (paths are relative to the spec file).") from None
    except IsADirectoryError:
        raise DataError(f"The {role} file {path} is a directory; expected a .tsv or .jsonl file.") from None
    except OSError as e:
        raise DataError(f"Can't read the {role} file {path}: {e.strerror}.") from None


def check_file(path: str | Path, role: str, *, max_lines: int | None = _CHECK_LINES) -> int:
    """Check a data file (exists, readable, the right columns, not empty); return the pairs seen."""
    path = Path(path)
    fmt = file_format(path)
    count = 0
    with _open(path, role) as f:
        try:
            for i, line in enumerate(f, start=1):
                if max_lines is not None and i > max_lines:
                    break
                if parse_line(line, fmt, f"{path}:{i}") is not None:
                    count += 1
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason}).") from None
    if count == 0:
        raise DataError(f"The {role} file {path} is empty (no sentence pairs).",
                        hint=_HINT_JSONL if fmt == "jsonl" else _HINT_TSV)
    return count


def read_pairs(path: str | Path, role: str = "validation") -> list[tuple[str, str]]:
    """Every pair of a (small) file, in order."""
    path = Path(path)
    fmt = file_format(path)
    with _open(path, role) as f:
        pairs = [p for i, line in enumerate(f, start=1) if (p := parse_line(line, fmt, f"{path}:{i}"))]
    if not pairs:
        raise DataError(f"The {role} file {path} is empty (no sentence pairs).")
    return pairs


# --- Ray Data (inside the cluster) -------------------------------------------------

_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: str):
    if path not in _TOKENIZERS:
        from rayfleet.train.modeling import load_tokenizer

        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


def _parse_batch(batch, fmt: str, source: str):
    import pyarrow as pa

    pairs = [p for line in batch["text"].to_pylist() if (p := parse_line(line, fmt, source))]
    return pa.table({"en": [p[0] for p in pairs], "fr": [p[1] for p in pairs]})


def _tokenize(tokenizer_path: str, en: list[str], fr: list[str], max_source: int, max_target: int
              ) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, labels) of the pairs, each truncated to its limit."""
    enc = _tokenizer(tokenizer_path)(en, text_target=fr, truncation=True, max_length=max_source)
    return enc["input_ids"], [ids[:max_target] for ids in enc["labels"]]


def _tokenize_batch(batch, tokenizer_path: str, max_source: int, max_target: int):
    import pyarrow as pa

    input_ids, labels = _tokenize(tokenizer_path, batch["en"].to_pylist(), batch["fr"].to_pylist(), max_source,
                                  max_target)
    return pa.table({"input_ids": pa.array(input_ids, pa.list_(pa.int32())),
                     "labels": pa.array(labels, pa.list_(pa.int32()))})


DRIVER_MAX_BYTES = 4 << 20   # data.ingest auto: a training file up to this size is tokenized by the driver


def ingest_in_driver(ingest: str, train_path: str) -> bool:
    """data.ingest: whether the driver tokenizes the files itself ('driver', or 'auto' and a small training
    file): Ray Data's tasks and actors cost ~10 s to start on a small cluster, a 5,000-pair file ~0.4 s here."""
    if ingest != "auto":
        return ingest == "driver"
    try:
        return Path(train_path).stat().st_size <= DRIVER_MAX_BYTES
    except OSError:
        return False


def tokenized_pairs(path: str, tokenizer_path: str, max_source: int, max_target: int
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """Every pair of a training file, tokenized in this process: (input_ids, labels)."""
    pairs = read_pairs(path, "train")
    return _tokenize(tokenizer_path, [en for en, _ in pairs], [fr for _, fr in pairs], max_source, max_target)


def text_dataset(path: str):
    """A Ray Dataset of (en, fr) string rows read from a TSV or JSONL file."""
    import ray.data

    fmt = file_format(path)
    return ray.data.read_text(path).map_batches(
        _parse_batch, batch_format="pyarrow", fn_kwargs={"fmt": fmt, "source": path})


def tokenized_dataset(path: str, tokenizer_path: str, max_source: int, max_target: int):
    """A Ray Dataset of tokenized rows (input_ids, labels), tokenized in parallel tasks."""
    return text_dataset(path).map_batches(
        _tokenize_batch, batch_format="pyarrow", batch_size=512,
        fn_kwargs={"tokenizer_path": tokenizer_path, "max_source": max_source, "max_target": max_target})
