"""What the default embedding understands of Chinese, on real reviews (``../shared/data``).

Linear probes on the vectors of 1,200 Chinese shopping reviews recover their product
category and sentiment, and English queries rank the catalog's Chinese items of their own
category first (benchmarks/multilingual_bench.py measures the same on more data). Thresholds
sit a little under what was measured: category 0.818 (held-out quarter of 2,000), sentiment
0.918, cross-lingual top-1 1.00.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.multilingual_bench import CHINESE_REVIEWS, cross_lingual, probe, review_sample
from dataflow.config import Config
from dataflow.factories import shared_embedder
from operators.text.embedding import Embedder, embed_queries

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> Embedder:
    return shared_embedder(Config())


@pytest.fixture(scope="module")
def reviews(shared_data: Path, model: Embedder) -> tuple[np.ndarray, list[str], list[int]]:
    texts, categories, labels = review_sample(shared_data / CHINESE_REVIEWS, 1_200, seed=5)
    return embed_queries(model, texts), categories, labels


def test_a_probe_recovers_the_category_of_chinese_reviews(reviews: tuple) -> None:
    vectors, categories, _ = reviews
    held_out, cross_validated = probe(vectors, categories, seed=5)
    assert min(held_out, cross_validated) >= 0.77, (held_out, cross_validated)


def test_a_probe_recovers_the_sentiment_of_chinese_reviews(reviews: tuple) -> None:
    vectors, _, labels = reviews
    held_out, cross_validated = probe(vectors, labels, seed=5)
    assert min(held_out, cross_validated) >= 0.87, (held_out, cross_validated)


def test_english_queries_rank_chinese_items_of_their_category_first(model: Embedder) -> None:
    result = cross_lingual(model, seed=5)
    assert result.top1_category >= 0.85 and result.precision_at_10 >= 0.8, result
