"""Every text within the limits gets a translation: what a model can't take whole is split.

A translation model reads at most ``max_input_tokens`` source tokens (its encoder's
positions). ``TextTranslator`` sits between the service (or a bulk job) and a
backend and makes any text fit:

- Line breaks are kept as they are: each line is translated on its own, and the
  output has the same breaks (and the same leading/trailing spaces) as the input.
- A line that fits the model is one model input, as before.
- A longer line is split into sentences by pysbd (a rule-based sentence splitter
  for the source language: abbreviations, decimals, quotes), each sentence is its
  own model input, and the translations are joined with the original spacing.
- A single sentence longer than the model's window is cut at a token boundary by
  the backend; the text's result says ``truncated``.

Failures stay with their text: when a model call raises, each of its inputs is
run again alone, and only the texts whose own input fails get a ``Failed``.

Not thread-safe: the replica calls ``translate`` from its one model thread.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from rayfleet.config.service import SENTENCE_LANGUAGES
from rayfleet.serve.backends.base import TranslationBackend

__all__ = ["TextTranslator", "Translated", "Failed", "Outcome", "SENTENCE_LANGUAGES", "split_lines"]

logger = logging.getLogger("rayfleet.serve.segment")

_LINE = re.compile(r"[^\n]+")
_EDGES = re.compile(r"^(\s*)(.*?)(\s*)$", re.S)


@dataclass(frozen=True)
class Translated:
    text: str
    truncated: bool = False  # a sentence was longer than the model's window and was cut


@dataclass(frozen=True)
class Failed:
    reason: str  # "<ExceptionType>: <message>" of the model call that failed on this text alone


Outcome = Translated | Failed


@dataclass
class _Plan:
    """One text: literal strings (kept as they are) and indexes of model inputs, in order."""

    parts: list[str | int]
    truncated: bool = False


def split_lines(text: str) -> list[tuple[str, str, str]]:
    """``(before, line, after)`` for each non-blank line: concatenated, they give ``text`` back."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    for m in _LINE.finditer(text):
        lead, core, trail = _EDGES.match(m.group()).groups()
        if not core:
            continue
        out.append((text[pos:m.start()] + lead, core, trail))
        pos = m.end()
    if out:
        before, core, trail = out[-1]
        out[-1] = (before, core, trail + text[pos:])
    return out


class TextTranslator:
    """``translate(texts) -> [Translated | Failed]``, one per text, in input order."""

    def __init__(self, backend: TranslationBackend, *, language: str = "en", max_batch_size: int = 32):
        import pysbd

        if language not in SENTENCE_LANGUAGES:
            raise ValueError(f"no sentence splitter for language {language!r}; "
                             f"expected one of {', '.join(SENTENCE_LANGUAGES)}")
        self.backend = backend
        self.language = language
        self.max_batch_size = max(1, max_batch_size)
        self._sentences = pysbd.Segmenter(language=language, clean=False, char_span=True)

    # -- splitting ---------------------------------------------------------------------------
    def _sentence_spans(self, line: str) -> list[tuple[str, str]]:
        """``(sentence, spacing after it)`` pairs that concatenate to ``line``."""
        spans: list[tuple[str, str]] = []
        pos = 0
        for span in self._sentences.segment(line):
            sentence = span.sent.strip()
            if not sentence:
                continue
            start = line.find(sentence, pos)
            if start < 0:  # the splitter changed the text: keep the line whole (cut, never lost silently)
                return [(line, "")]
            if spans:
                spans[-1] = (spans[-1][0], line[pos:start])
            elif start > 0:
                sentence = line[:start] + sentence
            spans.append((sentence, ""))
            pos = start + len(span.sent.strip())
        if not spans:
            return [(line, "")]
        spans[-1] = (spans[-1][0], line[pos:])
        return spans

    def _plan(self, texts: list[str]) -> tuple[list[_Plan], list[str]]:
        limit = self.backend.max_input_tokens
        lines = [split_lines(t) for t in texts]
        flat = [core for per_text in lines for _, core, _ in per_text]
        counts = iter(self.backend.count_tokens(flat) if flat else [])
        pieces: list[str] = []
        plans: list[_Plan] = []
        for text, per_text in zip(texts, lines):
            plan = _Plan(parts=[])
            if not per_text:  # blank text: nothing to translate (the service refuses it before)
                plan.parts.append(text)
            for before, core, after in per_text:
                plan.parts.append(before)
                if next(counts) <= limit:
                    plan.parts.append(len(pieces))
                    pieces.append(core)
                else:
                    spans = self._sentence_spans(core)
                    sentence_counts = self.backend.count_tokens([s for s, _ in spans])
                    for (sentence, gap), n in zip(spans, sentence_counts):
                        plan.truncated |= n > limit
                        plan.parts.extend([len(pieces), gap])
                        pieces.append(sentence)
                plan.parts.append(after)
            plans.append(plan)
        return plans, pieces

    # -- running -----------------------------------------------------------------------------
    def _call(self, inputs: list[str]) -> list[str]:
        got = self.backend.translate(inputs)
        if len(got) != len(inputs):  # the backend contract; never hand out misaligned results
            raise RuntimeError(f"the model returned {len(got)} outputs for {len(inputs)} inputs")
        return got

    def _run(self, pieces: list[str]) -> list[str | Failed]:
        """Model calls of at most ``max_batch_size`` inputs of similar length; a failed call's
        inputs are run again one by one, so a failure stays with the input that causes it."""
        out: list[str | Failed] = [""] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
        for start in range(0, len(order), self.max_batch_size):
            idx = order[start:start + self.max_batch_size]
            try:
                for i, t in zip(idx, self._call([pieces[i] for i in idx])):
                    out[i] = t
                continue
            except Exception as e:  # noqa: BLE001 - any model failure: find the input that causes it
                if len(idx) == 1:
                    out[idx[0]] = Failed(f"{type(e).__name__}: {e}")
                    continue
                logger.warning("a model call of %d inputs failed (%s: %s); running each alone",
                               len(idx), type(e).__name__, e)
            for i in idx:
                try:
                    out[i] = self._call([pieces[i]])[0]
                except Exception as e:  # noqa: BLE001 - this input's own failure, reported with its text
                    out[i] = Failed(f"{type(e).__name__}: {e}")
        return out

    def translate(self, texts: list[str]) -> list[Outcome]:
        """Blocking. One outcome per text, in input order."""
        plans, pieces = self._plan(list(texts))
        results = self._run(pieces)
        outcomes: list[Outcome] = []
        for plan in plans:
            failed = next((results[p] for p in plan.parts if isinstance(p, int) and isinstance(results[p], Failed)),
                          None)
            if failed is not None:
                outcomes.append(failed)
                continue
            text = "".join(results[p] if isinstance(p, int) else p for p in plan.parts)
            outcomes.append(Translated(text, plan.truncated))
        return outcomes
