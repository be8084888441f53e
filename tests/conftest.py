"""Shared fixtures: a fake text encoder, the real Kafka broker, and the shared data sets.

The broker starts once per session, on first use. With ``CI=true`` a broker that cannot
start fails the Kafka tests; elsewhere (a laptop without a JDK) they are skipped, loudly.

Tests that evaluate on the real data sets in ``../shared/data`` (licences forbid copying
them here) ask for the ``shared_data`` fixture: it fails with a message naming the missing
folder, unless pytest is given ``--skip-shared-data``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from dataflow.commands.datasets import shared_data_dir
from tests.kafka_broker import KafkaBroker
from tests.server_process import unavailable

SHARED_DATA = shared_data_dir()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-shared-data",
        action="store_true",
        help="skip the evaluations that read the real data sets in ../shared/data",
    )


@pytest.fixture(scope="session")
def shared_data(request: pytest.FixtureRequest) -> Path:
    """The folder of real data sets; a clear failure (or a skip, if asked) when it is absent."""
    if request.config.getoption("--skip-shared-data"):
        pytest.skip("--skip-shared-data given")
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"this test reads the real data sets in {SHARED_DATA}, which is missing: put the "
            "shared folder beside the project (or set PROFILESTREAM_SHARED_DATA), or run "
            "pytest with --skip-shared-data to skip these tests"
        )
    return SHARED_DATA


class HashEncoder:
    """A deterministic stand-in for the model: each text maps to a fixed unit vector."""

    name = "hash-encoder"
    dim = 8
    prompts = MappingProxyType({"query": "query: ", "passage": "passage: "})

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def lookup(self, text: str) -> np.ndarray | None:
        return None

    def ready(self) -> bool:
        return True

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [
            np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim], np.uint8) + 1.0
            for t in texts
        ]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class WordListSentiment:
    """A stand-in sentiment model: positive when the text has a praising word."""

    PRAISE = ("good", "great", "love", "好", "喜欢")

    def score_one(self, text: str, vector: np.ndarray | None = None) -> float:
        return 0.9 if any(word in text.lower() for word in self.PRAISE) else 0.2


@pytest.fixture
def hash_encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(Path(tmp_path_factory.mktemp("kafka")))
    try:
        broker.start()
    except Exception as exc:
        unavailable("Kafka broker", str(exc), "these tests need a JDK and Maven")
    yield broker
    broker.stop()
