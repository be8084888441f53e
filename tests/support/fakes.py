"""Stand-ins for the models, for tests where the real one is not the point."""

from __future__ import annotations

import hashlib
from types import MappingProxyType

import numpy as np


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
