"""Read what an event's text says about its user: keywords and sentiment.

The profile step calls :func:`read_text` once per event. Queries and reviews yield
keywords (:mod:`operators.text.keywords`); opinions (reviews and complaints) also yield a
sentiment polarity in ``[-1, 1]`` from a :class:`SentimentScorer` (by default the shipped
model of :mod:`operators.text.sentiment`). Events without text yield ``None``.

>>> class Cheerful:
...     def score_one(self, text, vector=None):
...         return 0.9
>>> signals = read_text(Event("e", "u", 1, "review", item_id="i", text="Great soft fabric"),
...                     Cheerful())
>>> [word for word, _ in signals.keywords], round(signals.polarity, 2)
(['soft', 'fabric', 'great'], 0.8)
>>> read_text(Event("e", "u", 1, "search", text="red shoes"), Cheerful()).polarity is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from operators.ingest import Event
from operators.text.keywords import extract_keywords

#: Event types whose text says what the user is interested in.
KEYWORD_TYPES: Final = frozenset({"search", "review"})
#: Event types whose text is an opinion with a sentiment.
OPINION_TYPES: Final = frozenset({"review", "complaint"})


class SentimentScorer(Protocol):
    """What the stream needs from a sentiment model."""

    def score_one(self, text: str, vector: np.ndarray | None = None) -> float:
        """The probability that ``text`` is positive, in ``[0, 1]``; ``vector`` is the text's
        embedding, for models that read it (others ignore it)."""
        ...


@dataclass(frozen=True)
class TextSignals:
    """What one text says: its keywords (weights sum to 1) and, for opinions, a polarity."""

    keywords: list[tuple[str, float]]
    polarity: float | None


def read_text(
    event: Event,
    sentiment: SentimentScorer | None,
    keywords_per_text: int = 5,
    vector: np.ndarray | None = None,
) -> TextSignals | None:
    """Keywords of queries and reviews, polarity ``2 p(positive) - 1`` of opinions.

    ``vector`` is the event's embedding, if it has one, for a sentiment model that reads it.
    """
    if event.text is None or event.type not in KEYWORD_TYPES | OPINION_TYPES:
        return None
    keywords = (
        extract_keywords(event.text, keywords_per_text) if event.type in KEYWORD_TYPES else []
    )
    polarity = None
    if sentiment is not None and event.type in OPINION_TYPES:
        polarity = 2.0 * sentiment.score_one(event.text, vector) - 1.0
    return TextSignals(keywords, polarity)
