"""Extract a text's keywords by TF-IDF against a background corpus, in Chinese and English.

A query or review says what a user cares about in a handful of words; TF-IDF finds them:
a word scores by how often the text uses it times how rare it is in general text
(``idf = ln(N / df)``). The background document frequencies ship with the package:

- Chinese: the IDF table bundled with jieba (MIT), the same one ``jieba.analyse`` uses;
- English: ``data/idf_en.tsv``, computed from the 23,486 CC0 clothing reviews
  (``python -m operators.text.keywords womens_clothing_reviews.csv operators/data/idf_en.tsv``).

A word neither table knows gets the median IDF, as jieba does: new product names are
neither stop words nor the rarest of all. Weights are normalised to sum to 1, so every
text moves a profile's keywords by the same total amount, whatever its length.

>>> [word for word, _ in extract_keywords("蓝牙耳机续航很长，降噪效果很好", top_k=3)]
['蓝牙', '降噪', '续航']
>>> extract_keywords("The the the")
[]
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from operators.text.tokens import tokenize

#: Words shorter than this say little on their own ("a", "好", "买").
MIN_WORD_CHARS = 2


@dataclass(frozen=True)
class IdfTable:
    """Inverse document frequencies of a background corpus, with a value for unseen words."""

    idf: dict[str, float]
    unseen: float

    def __call__(self, word: str) -> float:
        return self.idf.get(word, self.unseen)


def idf_from_corpus(texts: Iterable[str], min_df: int = 2) -> IdfTable:
    """Count in how many texts each word appears; keep words seen in ``min_df`` texts or more.

    >>> table = idf_from_corpus(["red shoes", "red dress", "blue dress"], min_df=1)
    >>> round(table("red"), 3), round(table("shoes"), 3)
    (0.405, 1.099)
    """
    df: Counter[str] = Counter()
    n = 0
    for text in texts:
        n += 1
        df.update(set(tokenize(text)))
    idf = {w: math.log(n / c) for w, c in df.items() if c >= min_df}
    return IdfTable(idf, statistics.median(idf.values()) if idf else 0.0)


@cache
def background_idf() -> IdfTable:
    """The shipped Chinese and English background tables, merged (their words do not clash)."""
    idf: dict[str, float] = {}
    # Read the file, not the module: importing jieba.analyse builds its own copy of this
    # table and jieba.posseg's tag table (about 80 MB that no step uses).
    chinese = resources.files("jieba").joinpath("analyse/idf.txt").read_text("utf-8")
    for line in chinese.splitlines():
        word, _, value = line.partition(" ")
        idf[word] = float(value)
    unseen = statistics.median(idf.values())
    english = resources.files("operators").joinpath("data/idf_en.tsv").read_text("utf-8")
    for line in english.splitlines():
        word, _, value = line.partition("\t")
        idf[word] = float(value)
    return IdfTable(idf, unseen)


def extract_keywords(
    text: str, top_k: int = 5, idf: IdfTable | None = None
) -> list[tuple[str, float]]:
    """The ``top_k`` words of ``text`` by TF-IDF, weights summing to 1, best first.

    Ties keep the order of first appearance, so the result is deterministic.

    >>> extract_keywords("red running shoes, red laces, red", top_k=2, idf=IdfTable({}, 1.0))
    [('red', 0.75), ('running', 0.25)]
    """
    table = idf or background_idf()
    words = [w for w in tokenize(text, drop_stop_words=True) if len(w) >= MIN_WORD_CHARS]
    if not words:
        return []
    counts = Counter(words)  # insertion order = first appearance
    scores = {w: c * table(w) for w, c in counts.items()}
    best = sorted(scores.items(), key=lambda kv: -kv[1])[:top_k]
    total = sum(score for _, score in best)
    if total <= 0.0:
        return []
    return [(w, score / total) for w, score in best]


def _write_english_table(reviews_csv: Path, out: Path) -> None:
    with reviews_csv.open(encoding="utf-8", newline="") as f:
        texts = [f"{row['Title']} {row['Review Text']}" for row in csv.DictReader(f)]
    table = idf_from_corpus(texts, min_df=3)
    rows = sorted(table.idf.items(), key=lambda kv: (kv[1], kv[0]))
    out.write_text("".join(f"{w}\t{v:.4f}\n" for w, v in rows), encoding="utf-8")
    print(f"{len(rows)} words from {len(texts)} reviews -> {out}")


if __name__ == "__main__":
    _write_english_table(Path(sys.argv[1]), Path(sys.argv[2]))
