"""Tokenizers and models for training: a new tiny Marian, or a pretrained one.

``build_tokenizer`` trains one SentencePiece unigram model on both sides of the
training file and lays it out like opus-mt (``source.spm`` = ``target.spm``,
``vocab.json`` with ``</s>`` = 0, ``<unk>`` = 1, ``<pad>`` last), so the result
loads with ``AutoTokenizer.from_pretrained`` exactly like Helsinki-NLP models.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Iterator

__all__ = ["build_tokenizer", "load_tokenizer", "new_model", "load_model", "save_model"]

_EOS, _UNK, _PAD = "</s>", "<unk>", "<pad>"


def _lines(pairs: list[tuple[str, str]]) -> Iterator[str]:
    for en, fr in pairs:
        yield en
        yield fr


def build_tokenizer(pairs: list[tuple[str, str]], out_dir: str | Path, *, vocab_size: int,
                    max_length: int) -> Path:
    """Train a shared EN+FR SentencePiece model and write a MarianTokenizer into out_dir."""
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(pairs), model_writer=buf, model_type="unigram",
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
        eos_id=0, unk_id=1, bos_id=-1, pad_id=-1, num_threads=1, minloglevel=2,
    )
    model = buf.getvalue()
    proc = spm.SentencePieceProcessor(model_proto=model)
    vocab = {proc.id_to_piece(i): i for i in range(proc.get_piece_size())}
    vocab[_PAD] = len(vocab)
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(model)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    from transformers import MarianTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
        tok = MarianTokenizer(source_spm=str(out / "source.spm"), target_spm=str(out / "target.spm"),
                              vocab=str(out / "vocab.json"), source_lang="en", target_lang="fr",
                              model_max_length=max_length)
    tok.save_pretrained(out)
    return out


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(str(path))


def new_model(arch, tokenizer):
    """A freshly initialised MarianMTModel for ``arch`` (an ArchitectureSpec) and tokenizer."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    vocab = len(tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MarianConfig(
        vocab_size=vocab, decoder_vocab_size=vocab, d_model=arch.d_model,
        encoder_layers=arch.encoder_layers, decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.attention_heads, decoder_attention_heads=arch.attention_heads,
        encoder_ffn_dim=arch.ffn_dim, decoder_ffn_dim=arch.ffn_dim,
        max_position_embeddings=arch.max_positions, activation_function="swish", scale_embedding=True,
        dropout=arch.dropout, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=eos, forced_eos_token_id=eos,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    )
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad]], decoder_start_token_id=pad, eos_token_id=eos, forced_eos_token_id=eos,
        pad_token_id=pad, max_length=arch.max_positions, num_beams=1, do_sample=False)
    return model


def load_model(path: str | Path):
    from transformers import AutoModelForSeq2SeqLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForSeq2SeqLM.from_pretrained(str(path))


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained model + tokenizer, without the "Writing model shards" bar."""
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        if was:
            hf_logging.enable_progress_bar()
    return out
