"""Sentiment of reviews, comments and complaints, Chinese and English: P(positive).

The stream scores every opinion as it arrives, one at a time, so the model is linear and runs
in numpy over a few stored arrays (no pickle, no per-call scikit-learn):

- Features: character 1-3-grams of the normalised text (they catch "不好", "太差" whatever
  jieba makes of them) and word 1-2-grams of :func:`operators.text.tokenize` (they carry
  English, and Chinese phrases), hashed into ``2**bits`` buckets so no vocabulary is shipped.
- Two logistic-regression heads read the sublinear term frequencies ``1 + log(tf)``, each
  scaled per bucket and L2-normalised: the plain head scales by IDF, the NB head by IDF times
  the absolute naive-Bayes log-count ratio (NB-SVM, Wang & Manning 2012), which stresses the
  n-grams that separate the classes. P(positive) is the sigmoid of the mean of their logits;
  the pair is 0.2-0.4 points more accurate than either head alone (5-fold CV, Chinese).

Optionally an :class:`EmbeddingHead` adds a logistic head on the review's embedding (the
vector the stream computes for the interest vector anyway) to the n-gram logit:
:func:`add_embedding_head`, ``train-sentiment --embedding-head``. On the Chinese reviews it
adds 0.3-0.5 points (README); the shipped default has none.

Arrays are stored as float16 (``save``/``load_sentiment_model``: a JSON manifest plus a
compressed ``.npz``); training rounds them the same way, so a saved model scores exactly as
the trained one did. CSV readers take the labelled format (``label`` 1/0, ``review``) and the
rated one of the CC0 clothing reviews (``Title``, ``Review Text``, ``Rating``).

>>> texts = ["质量很好，很喜欢", "太差了，退货", "love it, great fit", "awful, fell apart"]
>>> model = train_sentiment(texts * 5, [1, 0, 1, 0] * 5, bits=12)
>>> [round(p) for p in model.score(["很喜欢", "太差", "great", "awful"])]
[1, 0, 1, 0]
>>> 0.0 <= model.score_one("") <= 1.0
True
"""

from __future__ import annotations

import csv
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import scipy.sparse as sp

from operators.text.tokens import normalize_text, tokenize

#: Where the shipped default model lives.
DEFAULT_MODEL_DIR: Final = Path(__file__).resolve().parents[1] / "data" / "sentiment"
MANIFEST: Final = "manifest.json"
ARRAYS: Final = "arrays.npz"
FORMAT_VERSION: Final = 1
#: Buckets (as a power of two) and inverse regularisation strength; 5-fold CV on Chinese
#: reviews: 2**20 buckets lose nothing to an exact vocabulary, C=10 beats 1, 3 and 30.
DEFAULT_BITS: Final = 20
DEFAULT_C: Final = 10.0
CHAR_ORDERS: Final = (1, 2, 3)
HEADS: Final = ("idf", "idf*|nb-ratio|")

Part = Literal["all", "train", "held_out"]
#: One row in this many is held out (by a hash of its text), whichever file it comes from.
HELD_OUT_EVERY: Final = 5

_PRIME = np.uint64(0x100000001B3)
# Offsets that keep word unigrams and bigrams apart from character n-grams of equal value.
_WORD = np.uint64(1 << 40)
_BIGRAM = np.uint64(1 << 41)


def _mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: spreads n-gram hashes evenly over the high bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def text_buckets(text: str, bits: int) -> np.ndarray:
    """The hash buckets of a text's character 1-3-grams and word 1-2-grams (with repeats).

    Character n-grams are hashed in numpy over the code points, words with CRC-32: both
    stable across processes, unlike ``hash()``.

    >>> text_buckets("好", 8).tolist() == text_buckets("好", 8).tolist()
    True
    >>> len(text_buckets("不好", 16))  # 不, 好, 不好 and the word 不好
    4
    """
    normal = normalize_text(text)
    codes = np.frombuffer(normal.encode("utf-32-le"), np.uint32).astype(np.uint64)
    grams = []
    rolling = np.zeros(len(codes), np.uint64)
    for n in CHAR_ORDERS:
        # rolling[i] becomes the hash of codes[i : i + n]; adding n separates the orders.
        rolling = rolling[: len(codes) - n + 1] * _PRIME + codes[n - 1 :] + np.uint64(n)
        grams.append(rolling)
    words = np.array([zlib.crc32(w.encode()) for w in tokenize(normal)], np.uint64) + _WORD
    grams += [words, words[:-1] * _PRIME + words[1:] + _BIGRAM]
    return _mix(np.concatenate(grams)) >> np.uint64(64 - bits)


def _term_counts(texts: Sequence[str], bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document, bucket, count) of every distinct bucket of every text, by document."""
    buckets = [text_buckets(t, bits) for t in texts]
    docs = np.repeat(np.arange(len(texts), dtype=np.int64), [len(b) for b in buckets])
    keys = (docs << bits) | np.concatenate([np.zeros(0, np.uint64), *buckets]).astype(np.int64)
    unique, counts = np.unique(keys, return_counts=True)
    return unique >> bits, unique & ((1 << bits) - 1), counts


def _as_stored(a: np.ndarray) -> np.ndarray:
    """``a`` at the precision it is saved with, so trained and loaded models score alike."""
    return a.astype(np.float16).astype(np.float32)


@dataclass(frozen=True, eq=False)
class EmbeddingHead:
    """A logistic head on texts' embeddings by ``model``, its logit added with ``weight``."""

    model: str  # the embedding model's name, without a precision suffix such as "+int8"
    coef: np.ndarray
    intercept: float
    weight: float = 0.5

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        return self.weight * (np.asarray(vectors, np.float32) @ self.coef + self.intercept)

    def reads(self, encoder_name: str) -> bool:
        """Whether vectors of the encoder named ``encoder_name`` are what it was trained on.

        >>> EmbeddingHead("e5", np.zeros(2), 0.0).reads("e5+int8")
        True
        """
        return encoder_name.split("+")[0] == self.model


@dataclass(frozen=True, eq=False)
class SentimentModel:
    """Linear heads over hashed n-grams; ``scales`` and ``coefs`` are (heads, 2**bits)."""

    bits: int
    scales: np.ndarray
    coefs: np.ndarray
    intercepts: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    embedding: EmbeddingHead | None = None

    def score(self, texts: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        """P(positive) of each text, float32 in [0, 1]; a text with no features gets the prior.

        With an embedding head and the texts' ``vectors`` (one row each), their logit joins in.
        """
        docs, buckets, counts = _term_counts(texts, self.bits)
        tf = 1.0 + np.log(counts)
        logits = np.zeros(len(texts))
        for scale, coef, intercept in zip(self.scales, self.coefs, self.intercepts, strict=True):
            values = tf * scale[buckets]
            norms = np.sqrt(np.bincount(docs, values * values, minlength=len(texts)))
            dots = np.bincount(docs, values * coef[buckets], minlength=len(texts))
            logits += np.divide(dots, norms, out=np.zeros(len(texts)), where=norms > 0)
            logits += intercept
        logits /= len(self.scales)
        if self.embedding is not None and vectors is not None:
            logits += self.embedding.logits(vectors)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def score_one(self, text: str, vector: np.ndarray | None = None) -> float:
        """P(positive) of one text (and its embedding, read if the model has a head)."""
        return float(self.score([text], None if vector is None else vector[None, :])[0])

    def save(self, directory: Path) -> None:
        """Write ``manifest.json`` and ``arrays.npz`` (float16, compressed) to ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        head = self.embedding
        arrays: dict[str, np.ndarray] = {
            "scales": self.scales.astype(np.float16),
            "coefs": self.coefs.astype(np.float16),
            "intercepts": self.intercepts.astype(np.float32),
        }
        if head is not None:
            arrays["embedding_coef"] = head.coef.astype(np.float32)
        np.savez_compressed(directory / ARRAYS, allow_pickle=False, **arrays)
        manifest = {**self.manifest, "format_version": FORMAT_VERSION, "bits": self.bits}
        if head is not None:
            manifest["embedding_head"] = {
                "model": head.model,
                "intercept": head.intercept,
                "weight": head.weight,
            }
        text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True)
        (directory / MANIFEST).write_text(text + "\n", encoding="utf-8")


def load_sentiment_model(directory: Path | None = None) -> SentimentModel:
    """The model saved in ``directory``; ``None`` gives the shipped default (loaded once)."""
    return _default_model() if directory is None else _load(directory)


@cache
def _default_model() -> SentimentModel:
    return _load(DEFAULT_MODEL_DIR)


def _load(directory: Path) -> SentimentModel:
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: unsupported sentiment model format")
    with np.load(directory / ARRAYS) as arrays:
        head = manifest.get("embedding_head")
        return SentimentModel(
            bits=int(manifest["bits"]),
            scales=arrays["scales"].astype(np.float32),
            coefs=arrays["coefs"].astype(np.float32),
            intercepts=arrays["intercepts"].astype(np.float32),
            manifest=manifest,
            embedding=None
            if head is None
            else EmbeddingHead(
                head["model"], arrays["embedding_coef"], float(head["intercept"]), head["weight"]
            ),
        )


def train_sentiment(
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    *,
    bits: int = DEFAULT_BITS,
    c: float = DEFAULT_C,
) -> SentimentModel:
    """Fit both heads on ``texts`` labelled 1 (positive) or 0 (negative).

    Buckets no training text hits get scale 0, as an unknown word has no column in a
    vocabulary-based TF-IDF.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    y = np.asarray(labels)
    if len(y) != len(texts) or set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("need one 0/1 label per text, with both classes present")
    docs, buckets, counts = _term_counts(texts, bits)
    tf = sp.csr_matrix((1.0 + np.log(counts), (docs, buckets)), shape=(len(texts), 1 << bits))
    df = np.bincount(buckets, minlength=1 << bits)
    idf = np.where(df > 0, np.log((1 + len(texts)) / (1 + df)) + 1, 0.0)
    # Naive-Bayes log-count ratio of bucket presence, Laplace-smoothed.
    present_pos = 1.0 + np.bincount(buckets[y[docs] == 1], minlength=1 << bits)
    present_neg = 1.0 + np.bincount(buckets[y[docs] == 0], minlength=1 << bits)
    ratio = np.log(present_pos / present_pos.sum()) - np.log(present_neg / present_neg.sum())
    scales = _as_stored(np.stack([idf, idf * np.abs(ratio)]))
    coefs, intercepts = [], []
    for scale in scales:
        head = LogisticRegression(C=c, solver="liblinear", max_iter=1000, random_state=0)
        head.fit(normalize(tf @ sp.diags(scale)), y)
        coefs.append(head.coef_[0])
        intercepts.append(head.intercept_[0])
    manifest = {
        "model": "hashed char 1-3-grams + word 1-2-grams, two logistic-regression heads",
        "char_orders": list(CHAR_ORDERS),
        "word_orders": [1, 2],
        "heads": list(HEADS),
        "c": c,
        "n_train": len(y),
        "n_positive": int(y.sum()),
    }
    return SentimentModel(
        bits, scales, _as_stored(np.stack(coefs)), np.array(intercepts, np.float32), manifest
    )


def add_embedding_head(
    model: SentimentModel,
    vectors: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    embedding_model: str,
    *,
    weight: float = 0.5,
    c: float = 3.0,
) -> SentimentModel:
    """``model`` with a logistic head on the training texts' embeddings (one row per label).

    ``weight`` 0.5 and ``c`` 3 were chosen on a validation split of the Chinese reviews.
    """
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression(C=c, max_iter=3_000).fit(np.asarray(vectors), np.asarray(labels))
    embedding = EmbeddingHead(
        embedding_model.split("+")[0],
        head.coef_[0].astype(np.float32),
        float(head.intercept_[0]),
        weight,
    )
    return replace(model, embedding=embedding)


@dataclass(frozen=True)
class LabelledTexts:
    """Texts and their sentiment labels (1 positive, 0 negative), as read from a CSV."""

    texts: list[str]
    labels: np.ndarray


def is_held_out(text: str) -> bool:
    """Whether a row belongs to the held-out fifth: by its text, so duplicates stay together.

    >>> sum(is_held_out(f"review {i}") for i in range(10_000))
    2015
    """
    return zlib.crc32(text.encode()) % HELD_OUT_EVERY == 0


def read_sentiment_csv(path: Path, part: Part = "all") -> LabelledTexts:
    """Labelled texts from a CSV in either format, told apart by the header.

    - ``label`` (1/0) and ``review`` (other columns, such as ``cat``, ignored): every row,
      empty reviews included (a scorer is asked about them too).
    - ``Rating``, ``Title`` and ``Review Text`` (the CC0 clothing reviews): title and text
      joined; ratings of 4 and 5 are positive, 1 and 2 negative; 3 and rows without any text
      are dropped.

    ``part`` keeps all rows, or only those outside or inside the held-out fifth.
    A byte-order mark opening the file is skipped.
    """
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        rows: list[tuple[str, int]] = []
        for line, row in enumerate(reader, start=2):
            if {"label", "review"} <= columns:
                rows.append((row["review"], _label(row["label"], path, line)))
            elif {"Rating", "Title", "Review Text"} <= columns:
                text = " ".join(t for t in (row["Title"], row["Review Text"]) if t.strip())
                rating = int(row["Rating"])
                if text and rating != 3:
                    rows.append((text, int(rating >= 4)))
            else:
                raise ValueError(
                    f"{path}: need columns label and review, or Rating, Title and Review Text"
                )
    if part != "all":
        rows = [r for r in rows if is_held_out(r[0]) == (part == "held_out")]
    return LabelledTexts([t for t, _ in rows], np.array([lab for _, lab in rows], np.int8))


def _label(value: str, path: Path, line: int) -> int:
    if value.strip() not in ("0", "1"):
        raise ValueError(f"{path}:{line}: label must be 1 or 0, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class SentimentEvaluation:
    """How a model did on labelled texts; ``reviews_per_s`` is batched scoring throughput."""

    n: int
    accuracy: float
    macro_f1: float
    reviews_per_s: float


def evaluate_sentiment(
    model: SentimentModel, data: LabelledTexts, vectors: np.ndarray | None = None
) -> SentimentEvaluation:
    """Accuracy and macro-F1 of thresholding P(positive) at 0.5, and scoring speed.

    ``vectors`` are the texts' embeddings, for a model with an embedding head (the time to
    compute them is not part of the speed).

    >>> model = train_sentiment(["好", "差"] * 3, [1, 0] * 3, bits=10)
    >>> result = evaluate_sentiment(model, LabelledTexts(["好", "差"], np.array([1, 0])))
    >>> result.n, result.accuracy, result.macro_f1
    (2, 1.0, 1.0)
    """
    model.score(["预热 warm up"])  # loads jieba's dictionary outside the timing
    start = time.perf_counter()
    predicted = model.score(data.texts, vectors) >= 0.5
    elapsed = time.perf_counter() - start
    truth = data.labels == 1
    f1s = []
    for cls in (True, False):
        hits = np.sum((predicted == cls) & (truth == cls))
        found, actual = np.sum(predicted == cls), np.sum(truth == cls)
        f1s.append(2.0 * hits / (found + actual) if found + actual else 0.0)
    return SentimentEvaluation(
        n=len(truth),
        accuracy=float(np.mean(predicted == truth)) if len(truth) else 0.0,
        macro_f1=float(np.mean(f1s)),
        reviews_per_s=len(truth) / elapsed if elapsed > 0 else 0.0,
    )
