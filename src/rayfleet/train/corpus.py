"""A synthetic EN→FR corpus, deterministic by seed, for tests and demos.

Templates (subject + verb, subject + verb + object) over a small bilingual
lexicon: 32 nouns with their gender, 16 adjectives (6 before the noun in
French, 10 after it, agreeing in gender and number), 16 verbs (8 intransitive,
8 transitive; 3rd person singular and plural). Articles follow the noun:
``le/la/les``, ``un/une/des``, ``l'`` before a vowel; English takes ``a/an``.

    >>> generate_pairs(1, seed=3)[0]      # doctest: +SKIP
    ('the small red cat sleeps', 'le petit chat rouge dort')

Sentences are lowercase without final punctuation. English nouns whose plural
equals the singular ("fish") are left out: they would make the number ambiguous.
``write_corpus`` writes disjoint train and validation files (held-out sentences
never occur in the training file).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pair", "CorpusFiles", "generate_pairs", "write_corpus"]

Pair = tuple[str, str]

# english singular, english plural, french singular, french plural, gender, animate
_NOUNS: list[tuple[str, str, str, str, str, bool]] = [
    ("cat", "cats", "chat", "chats", "m", True),
    ("dog", "dogs", "chien", "chiens", "m", True),
    ("bird", "birds", "oiseau", "oiseaux", "m", True),
    ("horse", "horses", "cheval", "chevaux", "m", True),
    ("boy", "boys", "garçon", "garçons", "m", True),
    ("man", "men", "homme", "hommes", "m", True),
    ("child", "children", "enfant", "enfants", "m", True),
    ("friend", "friends", "ami", "amis", "m", True),
    ("wolf", "wolves", "loup", "loups", "m", True),
    ("student", "students", "étudiant", "étudiants", "m", True),
    ("woman", "women", "femme", "femmes", "f", True),
    ("girl", "girls", "fille", "filles", "f", True),
    ("cow", "cows", "vache", "vaches", "f", True),
    ("mouse", "mice", "souris", "souris", "f", True),
    ("sister", "sisters", "sœur", "sœurs", "f", True),
    ("actress", "actresses", "actrice", "actrices", "f", True),
    ("book", "books", "livre", "livres", "m", False),
    ("tree", "trees", "arbre", "arbres", "m", False),
    ("car", "cars", "voiture", "voitures", "f", False),
    ("house", "houses", "maison", "maisons", "f", False),
    ("apple", "apples", "pomme", "pommes", "f", False),
    ("table", "tables", "table", "tables", "f", False),
    ("flower", "flowers", "fleur", "fleurs", "f", False),
    ("door", "doors", "porte", "portes", "f", False),
    ("letter", "letters", "lettre", "lettres", "f", False),
    ("chair", "chairs", "chaise", "chaises", "f", False),
    ("cake", "cakes", "gâteau", "gâteaux", "m", False),
    ("hat", "hats", "chapeau", "chapeaux", "m", False),
    ("plane", "planes", "avion", "avions", "m", False),
    ("bottle", "bottles", "bouteille", "bouteilles", "f", False),
    ("orange", "oranges", "orange", "oranges", "f", False),
    ("island", "islands", "île", "îles", "f", False),
]

# english, french forms (m sg, f sg, m pl, f pl), placed before the noun in French?
_ADJECTIVES: list[tuple[str, tuple[str, str, str, str], bool]] = [
    ("small", ("petit", "petite", "petits", "petites"), True),
    ("big", ("grand", "grande", "grands", "grandes"), True),
    ("young", ("jeune", "jeune", "jeunes", "jeunes"), True),
    ("fat", ("gros", "grosse", "gros", "grosses"), True),
    ("pretty", ("joli", "jolie", "jolis", "jolies"), True),
    ("bad", ("mauvais", "mauvaise", "mauvais", "mauvaises"), True),
    ("red", ("rouge", "rouge", "rouges", "rouges"), False),
    ("black", ("noir", "noire", "noirs", "noires"), False),
    ("white", ("blanc", "blanche", "blancs", "blanches"), False),
    ("green", ("vert", "verte", "verts", "vertes"), False),
    ("blue", ("bleu", "bleue", "bleus", "bleues"), False),
    ("fast", ("rapide", "rapide", "rapides", "rapides"), False),
    ("slow", ("lent", "lente", "lents", "lentes"), False),
    ("happy", ("heureux", "heureuse", "heureux", "heureuses"), False),
    ("tired", ("fatigué", "fatiguée", "fatigués", "fatiguées"), False),
    ("grey", ("gris", "grise", "gris", "grises"), False),
]

# english sg, english pl, french sg, french pl, transitive
_VERBS: list[tuple[str, str, str, str, bool]] = [
    ("sleeps", "sleep", "dort", "dorment", False),
    ("runs", "run", "court", "courent", False),
    ("sings", "sing", "chante", "chantent", False),
    ("dances", "dance", "danse", "dansent", False),
    ("laughs", "laugh", "rit", "rient", False),
    ("swims", "swim", "nage", "nagent", False),
    ("waits", "wait", "attend", "attendent", False),
    ("falls", "fall", "tombe", "tombent", False),
    ("sees", "see", "voit", "voient", True),
    ("eats", "eat", "mange", "mangent", True),
    ("likes", "like", "aime", "aiment", True),
    ("wants", "want", "veut", "veulent", True),
    ("takes", "take", "prend", "prennent", True),
    ("finds", "find", "trouve", "trouvent", True),
    ("buys", "buy", "achète", "achètent", True),
    ("watches", "watch", "regarde", "regardent", True),
]

_FR_VOWELS = tuple("aeiouyéèêâîôûh")  # 'h' muet in this lexicon (homme)


def _noun_phrase(rng: random.Random, animate_only: bool) -> tuple[str, str, bool]:
    """One noun phrase: (english, french, plural)."""
    nouns = [n for n in _NOUNS if n[5]] if animate_only else _NOUNS
    en_sg, en_pl, fr_sg, fr_pl, gender, _ = rng.choice(nouns)
    plural = rng.random() < 0.4
    definite = rng.random() < 0.6
    pre = rng.choice([a for a in _ADJECTIVES if a[2]]) if rng.random() < 0.3 else None
    post = rng.choice([a for a in _ADJECTIVES if not a[2]]) if rng.random() < 0.45 else None
    form = (2 if plural else 0) + (1 if gender == "f" else 0)

    en_words = [a[0] for a in (pre, post) if a is not None] + [en_pl if plural else en_sg]
    if plural:
        en_det = "the" if definite else "some"
    elif definite:
        en_det = "the"
    else:
        en_det = "an" if en_words[0][0] in "aeiou" else "a"

    fr_words = ([pre[1][form]] if pre else []) + [fr_pl if plural else fr_sg] + ([post[1][form]] if post else [])
    if plural:
        fr_det = "les" if definite else "des"
    elif not definite:
        fr_det = "une" if gender == "f" else "un"
    elif fr_words[0].startswith(_FR_VOWELS):
        fr_det = "l'"
    else:
        fr_det = "la" if gender == "f" else "le"
    en = " ".join([en_det, *en_words])
    fr = fr_det + " ".join(fr_words) if fr_det == "l'" else " ".join([fr_det, *fr_words])
    return en, fr, plural


def _sentence(rng: random.Random) -> Pair:
    subj_en, subj_fr, plural = _noun_phrase(rng, animate_only=True)
    en_sg, en_pl, fr_sg, fr_pl, transitive = rng.choice(_VERBS)
    en = [subj_en, en_pl if plural else en_sg]
    fr = [subj_fr, fr_pl if plural else fr_sg]
    if transitive:
        obj_en, obj_fr, _ = _noun_phrase(rng, animate_only=False)
        en.append(obj_en)
        fr.append(obj_fr)
    return " ".join(en), " ".join(fr)


def generate_pairs(count: int, *, seed: int = 0) -> list[Pair]:
    """``count`` distinct (english, french) pairs; the same list for the same seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Pair] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > count * 50:
            raise ValueError(f"can't generate {count} distinct sentences from this lexicon")
        en, fr = _sentence(rng)
        if en not in seen:
            seen.add(en)
            out.append((en, fr))
    return out


@dataclass(frozen=True)
class CorpusFiles:
    train: Path
    validation: Path


def _write(path: Path, pairs: list[Pair], fmt: str) -> None:
    if fmt == "jsonl":
        text = "".join(json.dumps({"en": en, "fr": fr}, ensure_ascii=False) + "\n" for en, fr in pairs)
    else:
        text = "".join(f"{en}\t{fr}\n" for en, fr in pairs)
    path.write_text(text, encoding="utf-8")


def write_corpus(out_dir: str | Path, *, seed: int = 0, train_size: int = 5000,
                 validation_size: int = 500, fmt: str = "tsv") -> CorpusFiles:
    """Write ``train.<fmt>`` and ``validation.<fmt>`` (tsv or jsonl) with disjoint sentences."""
    if fmt not in ("tsv", "jsonl"):
        raise ValueError(f"fmt must be 'tsv' or 'jsonl', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = generate_pairs(train_size + validation_size, seed=seed)
    files = CorpusFiles(out / f"train.{fmt}", out / f"validation.{fmt}")
    _write(files.train, pairs[:train_size], fmt)
    _write(files.validation, pairs[train_size:], fmt)
    return files


if __name__ == "__main__":  # python -m rayfleet.train.corpus OUT_DIR [SEED]
    import sys

    files = write_corpus(sys.argv[1], seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    sys.stdout.write(f"{files.train}\n{files.validation}\n")
