"""Normalise and tokenise what users write, in Chinese and English.

Queries and reviews arrive in every form a keyboard allows: full-width letters and digits
from Chinese input methods, mixed case, emoji, runs of punctuation and whitespace. The
NLP operators (keywords, sentiment) see them through two functions:

- :func:`normalize_text` folds full-width forms to half-width (Unicode NFKC), lower-cases,
  drops emoji and control characters and collapses whitespace, keeping punctuation (it
  carries sentiment: "好!!!" is not "好?").
- :func:`tokenize` splits a normalised text into words: Chinese runs are segmented with
  jieba (a maintained dictionary + HMM segmenter, far better than any home-made one),
  Latin runs by a word pattern that keeps "don't" and "4k" whole; punctuation is dropped
  and, optionally, stop words.

>>> normalize_text("ＡＢＣ  超好用！！👍")
'abc 超好用!!'
>>> tokenize("这件衣服质量很好，尺码也合适 Love it!", drop_stop_words=True)
['这件', '衣服', '质量', '好', '尺码', '合适', 'love']
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from functools import cache, lru_cache
from importlib import resources

# Emoji and pictographs, dingbats, variation selectors, zero-width joiners and regional
# indicator letters: they decorate text but are not words.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f1e6-\U0001f1ff\ufe0e\ufe0f\u200d\u20e3]"
)
_SPACES = re.compile(r"\s+")
# A CJK run (segmented by jieba) or a Latin/digit word (apostrophes inside words kept).
_RUNS = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)|([0-9a-z]+(?:'[a-z]+)*)")

_jieba_lock = threading.Lock()


def normalize_text(text: str) -> str:
    """Fold width and case, drop emoji and control characters, collapse whitespace.

    >>> normalize_text("  Ｒｅｄ\\tShoes\\u3000２０２６ ")
    'red shoes 2026'
    >>> normalize_text("\\ufeff好评")
    '好评'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _EMOJI.sub(" ", text)
    # A printable string has no character of category C (control, format, unassigned...):
    # skip the per-character pass, the costliest step, for the common case.
    if not text.isprintable():
        text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return _SPACES.sub(" ", text).strip()


@cache
def chinese_segmenter() -> object:
    """jieba's tokenizer with its dictionary loaded: once per process (about a second)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter is noise in a stream
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return tokenizer


def segment_chinese(run: str) -> list[str]:
    """Split a run of Chinese characters into words (jieba, HMM for unknown words).

    >>> segment_chinese("质量很好")
    ['质量', '很', '好']
    """
    return list(_segmented(run))


# Each text is tokenised by both keyword extraction and the sentiment model, and queries
# repeat heavily: segmentation, the costly part, is done once per distinct run.
@lru_cache(maxsize=16_384)
def _segmented(run: str) -> tuple[str, ...]:
    tokenizer = chinese_segmenter()
    # jieba's tokenizer keeps mutable caches; Bytewax worker threads share this one.
    with _jieba_lock:
        return tuple(tokenizer.cut(run, HMM=True))  # type: ignore[attr-defined]


def tokenize(text: str, *, drop_stop_words: bool = False) -> list[str]:
    """Normalise ``text`` and return its words in order, without punctuation.

    >>> tokenize("I don't like the 4K TV's colour")
    ['i', "don't", 'like', 'the', '4k', "tv's", 'colour']
    >>> tokenize("I don't like the 4K TV", drop_stop_words=True)
    ['like', '4k', 'tv']
    """
    words: list[str] = []
    for match in _RUNS.finditer(normalize_text(text)):
        chinese, latin = match.groups()
        words.extend(segment_chinese(chinese) if chinese else [latin])
    if drop_stop_words:
        stop = stop_words()
        words = [w for w in words if w not in stop]
    return words


@cache
def stop_words() -> frozenset[str]:
    """English (scikit-learn's list) and Chinese function words that say nothing of interest.

    >>> {"the", "的", "了"} <= stop_words(), "shoes" in stop_words()
    (True, False)
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    chinese = resources.files("operators").joinpath("data/stopwords_zh.txt").read_text("utf-8")
    words = {line.strip() for line in chinese.splitlines()}
    english = {w for w in ENGLISH_STOP_WORDS if w not in _ENGLISH_KEEP}
    return frozenset(english | {w for w in words if w and not w.startswith("#")} | {"don't"})


# Words on scikit-learn's list that carry sentiment or intent in shopping text.
_ENGLISH_KEEP = frozenset({"not", "no", "nor", "never", "cannot", "without", "against"})
