"""What texts say: tokens, keywords, sentiment, and (in :mod:`operators.text.embedding`) the
vectors a transformer gives them.

Search queries and reviews are tokenised alike for English and Chinese (jieba) by
:func:`tokenize`; :func:`extract_keywords` ranks a text's words by TF-IDF against a background
table; a :class:`SentimentModel` scores opinions from -1 to 1; :func:`read_text` bundles what
an event's text says into :class:`TextSignals`, which the profile step folds in.

>>> tokenize("Red running shoes, 跑步鞋!")
['red', 'running', 'shoes', '跑步', '鞋']
"""

from operators.text.keywords import IdfTable, extract_keywords, idf_from_corpus
from operators.text.sentiment import (
    DEFAULT_BITS,
    DEFAULT_C,
    DEFAULT_MODEL_DIR,
    LabelledTexts,
    SentimentModel,
    add_embedding_head,
    evaluate_sentiment,
    load_sentiment_model,
    read_sentiment_csv,
    train_sentiment,
)
from operators.text.signals import SentimentScorer, TextSignals, read_text
from operators.text.tokens import normalize_text, tokenize

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_C",
    "DEFAULT_MODEL_DIR",
    "IdfTable",
    "LabelledTexts",
    "SentimentModel",
    "SentimentScorer",
    "TextSignals",
    "add_embedding_head",
    "evaluate_sentiment",
    "extract_keywords",
    "idf_from_corpus",
    "load_sentiment_model",
    "normalize_text",
    "read_sentiment_csv",
    "read_text",
    "tokenize",
    "train_sentiment",
]
