"""The real MiniLM embedder: agreement with sentence-transformers on real reviews, caching."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dataflow.flow import shared_embedder
from operators.embedding import Embedder, default_model_dir

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[1] / "operators" / "data" / "reviews_en_sample.csv"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return shared_embedder(None, None, 50_000, 64)


def reviews(n: int) -> list[str]:
    with SAMPLE.open(newline="") as f:
        return [row["review"] for row in csv.DictReader(f)][:n]


def test_vectors_match_sentence_transformers_on_real_reviews(embedder: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [*reviews(240), "蓝牙耳机 降噪 续航长", "这件衣服质量很好，尺码合适"]
    ours = Embedder(cache_size=0).encode(texts)
    reference = SentenceTransformer(str(default_model_dir()), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
    cosine = np.sum(ours * reference, axis=1)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert cosine.min() >= 0.99, cosine.min()


def test_unit_length_and_input_order(embedder: Embedder) -> None:
    texts = ["red running shoes", "a very long review " * 40, "蓝牙耳机"]
    together = embedder.encode(texts)
    alone = np.stack([Embedder(cache_size=0).encode([t])[0] for t in texts])
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-5)


def test_repeated_texts_are_computed_once_and_cached() -> None:
    model = Embedder(cache_size=2)
    assert model.lookup("shoes") is None
    first = model.encode(["shoes", "shoes", "bags"])
    assert np.array_equal(first[0], first[1])
    cached = model.lookup("shoes")
    assert cached is not None and np.array_equal(cached, first[0])
    model.encode(["hats"])  # evicts the least recently used ("bags")
    assert model.lookup("bags") is None and model.lookup("hats") is not None
