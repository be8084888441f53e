"""Shared fixtures: a fake text encoder, and the real Kafka broker the test command starts.

The broker starts once per session, on first use. With ``CI=true`` a broker that cannot
start fails the Kafka tests; elsewhere (a laptop without a JDK) they are skipped, loudly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.kafka_broker import KafkaBroker


class HashEncoder:
    """A deterministic stand-in for the model: each text maps to a fixed unit vector."""

    name = "hash-encoder"
    dim = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def lookup(self, text: str) -> np.ndarray | None:
        return None

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [
            np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim], np.uint8) + 1.0
            for t in texts
        ]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def hash_encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(Path(tmp_path_factory.mktemp("kafka")))
    try:
        broker.start()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Kafka broker failed to start under CI: {exc}")
        pytest.skip(f"Kafka broker unavailable ({exc}); these tests need a JDK and Maven")
    yield broker
    broker.stop()
