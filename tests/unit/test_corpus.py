"""The synthetic EN→FR corpus: deterministic, disjoint splits, French grammar rules."""

from __future__ import annotations

import json

import pytest

from rayfleet.train.corpus import generate_pairs, write_corpus
from rayfleet.train.data import check_file, read_pairs

pytestmark = pytest.mark.unit


def test_same_seed_same_corpus_other_seed_other_corpus():
    assert generate_pairs(200, seed=7) == generate_pairs(200, seed=7)
    assert generate_pairs(200, seed=7) != generate_pairs(200, seed=8)


def test_pairs_are_distinct_and_lowercase():
    pairs = generate_pairs(3000, seed=0)
    assert len({en for en, _ in pairs}) == 3000
    assert all(en == en.lower() and fr == fr.lower() for en, fr in pairs)


def test_adjective_reordering_and_agreement():
    pairs = dict(generate_pairs(20000, seed=0))
    # "the small red cat sleeps" -> "le petit chat rouge dort": pre-nominal adjective
    # before the noun, the colour after it, both agreeing with the noun
    small_red = [(en.split(), fr.split()) for en, fr in pairs.items() if en.startswith("the small red ")]
    assert small_red
    for en, fr in small_red:
        assert fr[0:2] in (["le", "petit"], ["la", "petite"], ["les", "petits"], ["les", "petites"])
        assert fr[3] in ("rouge", "rouges")
    for en, fr in pairs.items():
        if en.startswith("the small red cat "):
            assert fr.startswith("le petit chat rouge ")
        if en.startswith("the white women "):
            assert fr.startswith("les femmes blanches ")
        if en.startswith("a happy woman "):
            assert fr.startswith("une femme heureuse ")


def test_elision_before_a_vowel_only_without_adjective():
    pairs = generate_pairs(5000, seed=1)
    frs = [fr for _, fr in pairs]
    assert any(fr.startswith("l'homme ") for fr in frs)
    assert not any(" le homme" in f" {fr}" or " la île" in f" {fr}" for fr in frs)
    assert any(fr.startswith("le petit homme ") for fr in frs)


def test_write_corpus_splits_are_disjoint(tmp_path):
    files = write_corpus(tmp_path, seed=3, train_size=400, validation_size=50)
    train, valid = read_pairs(files.train, "train"), read_pairs(files.validation)
    assert (len(train), len(valid)) == (400, 50)
    assert not {en for en, _ in train} & {en for en, _ in valid}
    assert check_file(files.train, "train") == 400


def test_write_corpus_jsonl(tmp_path):
    files = write_corpus(tmp_path, seed=3, train_size=20, validation_size=5, fmt="jsonl")
    first = json.loads(files.train.read_text().splitlines()[0])
    assert set(first) == {"en", "fr"}
    assert check_file(files.validation, "validation") == 5
