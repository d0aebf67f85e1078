"""TextTranslator: long texts split into sentences and joined back, truncation flagged,
a failing input isolated. A fake backend counts words as tokens (no model, no Ray)."""

from __future__ import annotations

import pytest

from rayfleet.serve.segment import Failed, TextTranslator, Translated, split_lines
from rayfleet.testing.faults import FAIL_MARKER, fail_on_marker

pytestmark = pytest.mark.unit


class WordBackend:
    """Uppercases; a text is one token per word plus </s>; records every call."""

    name = "words"
    max_new_tokens = 64

    def __init__(self, max_input_tokens: int = 8):
        self.max_input_tokens = max_input_tokens
        self.calls: list[list[str]] = []

    def count_tokens(self, texts):
        return [len(t.split()) + 1 for t in texts]

    def translate(self, texts):
        self.calls.append(list(texts))
        return [t.upper() for t in texts]

    def info(self):
        return {"backend": self.name}


def test_split_lines_gives_the_text_back():
    text = "  First line.\n\n\tSecond  line. \n   \nThird\n"
    parts = split_lines(text)
    assert [core for _, core, _ in parts] == ["First line.", "Second  line.", "Third"]
    assert "".join(b + c + a for b, c, a in parts) == text
    assert split_lines("   \n ") == []


def test_a_text_that_fits_is_one_model_input():
    backend = WordBackend()
    out = TextTranslator(backend).translate(["The cat sleeps."])
    assert out == [Translated("THE CAT SLEEPS.")]
    assert backend.calls == [["The cat sleeps."]]


def test_long_paragraphs_split_into_sentences_keep_spacing_and_breaks():
    backend = WordBackend(max_input_tokens=8)
    text = ("  Mr. Smith went to Washington on Monday. He met Dr. Jones there.  It rained all day long.\n\n"
            "Short line.\nThe end of it all is near. Or so they said.  ")
    [out] = TextTranslator(backend).translate([text])
    assert out == Translated(text.upper(), truncated=False)
    inputs = sorted(x for call in backend.calls for x in call)
    # Abbreviations are not sentence ends (pysbd's English rules), lines that fit stay whole.
    assert inputs == sorted(["Mr. Smith went to Washington on Monday.", "He met Dr. Jones there.",
                             "It rained all day long.", "Short line.", "The end of it all is near.",
                             "Or so they said."])


def test_one_sentence_longer_than_the_window_is_flagged():
    backend = WordBackend(max_input_tokens=8)
    long_sentence = " ".join(["word"] * 20) + "."
    out = TextTranslator(backend).translate(["Fine.", long_sentence, f"Ok. {long_sentence} Ok."])
    assert out == [Translated("FINE."), Translated(long_sentence.upper(), truncated=True),
                   Translated(f"OK. {long_sentence.upper()} OK.", truncated=True)]


def test_model_calls_hold_at_most_max_batch_size_inputs():
    backend = WordBackend(max_input_tokens=4)
    text = " ".join(f"Sentence {i}." for i in range(50))
    [out] = TextTranslator(backend, max_batch_size=16).translate([text])
    assert out.text == text.upper()
    assert [len(c) for c in backend.calls] == [16, 16, 16, 2]


def test_one_failing_text_among_32_fails_alone():
    backend = fail_on_marker(WordBackend(max_input_tokens=100))
    texts = [f"Text number {i}." for i in range(32)]
    texts[13] = f"Bad {FAIL_MARKER} text."
    out = TextTranslator(backend, max_batch_size=32).translate(texts)
    assert out[13] == Failed(f"RuntimeError: injected failure: an input holds {FAIL_MARKER}")
    assert [o for i, o in enumerate(out) if i != 13] == [Translated(t.upper()) for i, t in enumerate(texts) if i != 13]


def test_a_failing_sentence_fails_only_its_text():
    backend = fail_on_marker(WordBackend(max_input_tokens=6))
    bad = f"One two three. Four {FAIL_MARKER} five six seven eight. Nine."
    out = TextTranslator(backend).translate(["Good text.", bad])
    assert out[0] == Translated("GOOD TEXT.")
    assert isinstance(out[1], Failed)


def test_misaligned_backend_output_is_a_failure_not_a_wrong_answer():
    class Short(WordBackend):
        def translate(self, texts):
            return [t.upper() for t in texts][:-1]

    out = TextTranslator(Short()).translate(["a", "b"])
    assert out == [Failed("RuntimeError: the model returned 0 outputs for 1 inputs")] * 2


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="no sentence splitter for language 'xx'"):
        TextTranslator(WordBackend(), language="xx")
