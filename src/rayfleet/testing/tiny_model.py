"""Tiny, locally built MarianMT EN->FR model for test fixtures and benchmarks.

The serving code loads translation models with ``AutoTokenizer.from_pretrained`` and
``AutoModelForSeq2SeqLM.from_pretrained`` (for instance ``Helsinki-NLP/opus-mt-en-fr``).
No model hub is reachable from the test machines, so :func:`build_tiny_marian` builds a
model of the same architecture and file layout from scratch, in a few seconds on CPU:

* a SentencePiece unigram model trained on a small generated English + French corpus,
  used as both ``source.spm`` and ``target.spm``;
* a ``vocab.json`` laid out like opus-mt (``</s>`` = 0, ``<unk>`` = 1, pieces, ``<pad>`` last);
* a tiny ``MarianMTModel`` (d_model 32) briefly trained on word-for-word EN->FR pairs, so
  that greedy generation produces non-empty outputs that differ between inputs.

Everything is saved with ``save_pretrained``, so the real loading code is exercised on a
model built locally. The build is deterministic for a given seed.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer
from transformers.utils import logging as hf_logging

__all__ = ["SAMPLE_TEXTS", "build_tiny_marian", "greedy_translations"]

# English -> French word lists. Nouns carry their French article so that sentences
# translate word for word (with the French adjective after the noun).
_SUBJECTS: dict[str, str] = {
    "the cat": "le chat",
    "the dog": "le chien",
    "the child": "l'enfant",
    "the teacher": "le professeur",
    "the woman": "la femme",
    "the man": "l'homme",
    "my friend": "mon ami",
    "the bird": "l'oiseau",
}
_VERBS: dict[str, str] = {
    "sees": "voit",
    "eats": "mange",
    "likes": "aime",
    "finds": "trouve",
    "wants": "veut",
    "takes": "prend",
    "buys": "achète",
    "reads": "lit",
}
_OBJECTS: dict[str, str] = {
    "the apple": "la pomme",
    "the book": "le livre",
    "the house": "la maison",
    "the car": "la voiture",
    "the bread": "le pain",
    "the letter": "la lettre",
    "the flower": "la fleur",
    "the table": "la table",
}
_ADJECTIVES: dict[str, str] = {
    "red": "rouge",
    "big": "grand",
    "small": "petit",
    "green": "vert",
    "old": "vieux",
    "new": "nouveau",
}
_PLACES: dict[str, str] = {
    "in the garden": "dans le jardin",
    "at home": "à la maison",
    "in the city": "dans la ville",
    "today": "aujourd'hui",
    "every morning": "chaque matin",
}

_CORPUS_SIZE = 400
_SAMPLE_SEED = 1234
_SAMPLE_SIZE = 40
_MAX_POSITIONS = 64
_TRAIN_STEPS = 100
_BATCH_SIZE = 32
_LEARNING_RATE = 1e-2

_EOS, _UNK, _PAD = "</s>", "<unk>", "<pad>"


def _with_adjective(noun: tuple[str, str], adjective: tuple[str, str] | None) -> tuple[str, str]:
    """Insert an adjective: before the noun in English, after it in French."""
    if adjective is None:
        return noun
    en_det, en_noun = noun[0].split(" ", 1)
    return f"{en_det} {adjective[0]} {en_noun}", f"{noun[1]} {adjective[1]}"


def _sentence_pair(rng: random.Random) -> tuple[str, str]:
    """Generate one (English, French) sentence pair from the word lists."""
    subject = rng.choice(sorted(_SUBJECTS.items()))
    verb = rng.choice(sorted(_VERBS.items()))
    obj = rng.choice(sorted(_OBJECTS.items()))
    adjective = rng.choice(sorted(_ADJECTIVES.items())) if rng.random() < 0.5 else None
    obj = _with_adjective(obj, adjective)
    en = [subject[0], verb[0], obj[0]]
    fr = [subject[1], verb[1], obj[1]]
    if rng.random() < 0.4:
        place = rng.choice(sorted(_PLACES.items()))
        en.append(place[0])
        fr.append(place[1])
    return " ".join(en).capitalize() + ".", " ".join(fr).capitalize() + "."


def _sentence_pairs(seed: int, count: int) -> list[tuple[str, str]]:
    """Generate ``count`` deterministic sentence pairs for ``seed``."""
    rng = random.Random(seed)
    return [_sentence_pair(rng) for _ in range(count)]


SAMPLE_TEXTS: list[str] = [en for en, _ in _sentence_pairs(_SAMPLE_SEED, _SAMPLE_SIZE)]


def _corpus_lines(pairs: list[tuple[str, str]]) -> Iterator[str]:
    for en, fr in pairs:
        yield en
        yield fr


def _train_sentencepiece(pairs: list[tuple[str, str]], vocab_size: int) -> bytes:
    """Train a unigram SentencePiece model in memory; ``</s>`` is id 0 and ``<unk>`` id 1."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus_lines(pairs),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        eos_id=0,
        unk_id=1,
        bos_id=-1,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _marian_vocab(spm_model: bytes) -> dict[str, int]:
    """Map pieces to ids like opus-mt: ``</s>``, ``<unk>``, the pieces, then ``<pad>`` last."""
    processor = spm.SentencePieceProcessor(model_proto=spm_model)
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    if vocab.get(_EOS) != 0 or vocab.get(_UNK) != 1:
        raise RuntimeError(f"unexpected SentencePiece special ids: {_EOS}={vocab.get(_EOS)}, {_UNK}={vocab.get(_UNK)}")
    vocab[_PAD] = len(vocab)
    return vocab


def _write_tokenizer_files(out_dir: Path, spm_model: bytes, vocab: dict[str, int]) -> None:
    for name in ("source.spm", "target.spm"):
        (out_dir / name).write_bytes(spm_model)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8")


def _load_tokenizer(out_dir: Path, max_positions: int = _MAX_POSITIONS) -> MarianTokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
        return MarianTokenizer(
            source_spm=str(out_dir / "source.spm"),
            target_spm=str(out_dir / "target.spm"),
            vocab=str(out_dir / "vocab.json"),
            source_lang="en",
            target_lang="fr",
            model_max_length=max_positions,
        )


def _marian_config(vocab: dict[str, int], max_positions: int = _MAX_POSITIONS, d_model: int = 32) -> MarianConfig:
    pad_id, eos_id = vocab[_PAD], vocab[_EOS]
    return MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=d_model,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=max_positions,
        activation_function="swish",
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=pad_id,
        decoder_start_token_id=pad_id,
        eos_token_id=eos_id,
        forced_eos_token_id=eos_id,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )


def _generation_config(config: MarianConfig, max_length: int = 32) -> GenerationConfig:
    return GenerationConfig(
        bad_words_ids=[[config.pad_token_id]],
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        forced_eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=max_length,
        num_beams=1,
        do_sample=False,
    )


def _train_model(model: MarianMTModel, tokenizer: MarianTokenizer, pairs: list[tuple[str, str]], seed: int) -> None:
    """A short teacher-forced training run so that greedy outputs are non-empty and input-dependent."""
    sources = [en for en, _ in pairs]
    targets = [fr for _, fr in pairs]
    batch = tokenizer(sources, text_target=targets, padding=True, return_tensors="pt")
    labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=_LEARNING_RATE)
    model.train()
    for _ in range(_TRAIN_STEPS):
        idx = torch.randint(len(pairs), (_BATCH_SIZE,), generator=generator)
        loss = model(
            input_ids=batch["input_ids"][idx],
            attention_mask=batch["attention_mask"][idx],
            labels=labels[idx],
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _build_model(tokenizer: MarianTokenizer, vocab: dict[str, int], pairs: list[tuple[str, str]], seed: int,
                 *, max_positions: int = _MAX_POSITIONS, generation_max_length: int = 32, d_model: int = 32,
                 train: bool = True, never_eos: bool = False) -> MarianMTModel:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed reduction order: same weights on any machine
    try:
        torch.manual_seed(seed)
        model = MarianMTModel(_marian_config(vocab, max_positions, d_model))
        model.generation_config = _generation_config(model.config, generation_max_length)
        if train:
            _train_model(model, tokenizer, pairs, seed)
        if never_eos:
            # A bias of -1e4 on </s> in the output layer (CTranslate2 converts it too): greedy
            # decoding never ends by itself, so every output runs to the length cap.
            bias = model.final_logits_bias.clone()
            bias[0, model.config.eos_token_id] = -1e4
            model.register_buffer("final_logits_bias", bias)
    finally:
        torch.set_num_threads(threads)
    return model


@contextmanager
def _progress_bars_disabled() -> Iterator[None]:
    """Silence the "Writing model shards" bar of ``save_pretrained``, then restore the setting."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_tiny_marian(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 200,
                      max_positions: int = _MAX_POSITIONS, generation_max_length: int = 32, d_model: int = 32,
                      train: bool = True, never_eos: bool = False) -> Path:
    """Build a tiny MarianMT EN->FR model (briefly trained on a synthetic corpus, deterministic by seed) + MarianTokenizer into out_dir,
    saved with save_pretrained, so that AutoTokenizer.from_pretrained(out_dir) and
    AutoModelForSeq2SeqLM.from_pretrained(out_dir) load it exactly like Helsinki-NLP/opus-mt-en-fr. Returns out_dir.

    The keywords build other shapes: fewer ``max_positions``, a generation config with another
    ``max_length``, random weights (``train=False``), or weights that never emit ``</s>``
    (``never_eos=True``: every output runs to the length cap)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = _sentence_pairs(seed, _CORPUS_SIZE)
    spm_model = _train_sentencepiece(pairs, vocab_size)
    vocab = _marian_vocab(spm_model)
    _write_tokenizer_files(out_dir, spm_model, vocab)
    tokenizer = _load_tokenizer(out_dir, max_positions)
    model = _build_model(tokenizer, vocab, pairs, seed, max_positions=max_positions,
                         generation_max_length=generation_max_length, d_model=d_model, train=train,
                         never_eos=never_eos)
    with _progress_bars_disabled():
        tokenizer.save_pretrained(out_dir)
        model.save_pretrained(out_dir)
    return out_dir


def greedy_translations(model_dir: str | Path, texts: list[str], *, max_new_tokens: int) -> dict[str, str]:
    """The ground truth a served model must give: in-process greedy ``generate``, one text at
    a time (no padding), decoded without special tokens. Keyed by text."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    out = {}
    for text in texts:
        with torch.inference_mode():
            ids = model.generate(**tok([text], return_tensors="pt"), num_beams=1, do_sample=False,
                                 max_new_tokens=max_new_tokens)
        out[text] = tok.decode(ids[0], skip_special_tokens=True)
    return out
