"""Micro-batch text across users for the embedding model without reordering any user.

The model is far faster on a batch of 64 texts than on 64 single texts, so events whose
text is not in the embedding cache wait in a :class:`MicroBatcher` until the batch is full
(``max_batch`` distinct texts) or the oldest has waited ``max_wait_ms``. Everything else
passes straight through -- unless its user already has an event waiting: then it queues
behind it, because a user's updates must apply in the order the user acted.

Time is passed in (``now_ms``), so the logic is tested without sleeping.

>>> import numpy as np
>>> from operators.events import Event
>>> class Fake:
...     def lookup(self, text): return None
...     def encode(self, texts): return np.ones((len(texts), 2), np.float32)
>>> batcher = MicroBatcher(Fake(), max_batch=2, max_wait_ms=50)
>>> batcher.add(Event("e1", "u1", 1, "search", text="red shoes"), now_ms=0)
[]
>>> [out.event.event_id for out in batcher.add(Event("e2", "u1", 2, "login"), now_ms=1)]
[]
>>> batcher.due_ms()
50
>>> [(out.event.event_id, out.vector is None) for out in batcher.flush(now_ms=50)]
[('e1', False), ('e2', True)]
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from operators.embedding import TextEncoder, embedding_text
from operators.events import Event


@dataclass(frozen=True)
class EmbeddedEvent:
    """An event with the vector of its text (``None`` when it has no text to embed)."""

    event: Event
    vector: np.ndarray | None


@dataclass(frozen=True)
class BatchReport:
    """What one closed batch cost: distinct texts embedded, wait of the oldest, model time."""

    size: int
    wait_ms: int
    embed_seconds: float


class MicroBatcher:
    """Buffer events whose text needs the model; release all events in per-user order.

    Args:
        encoder: The embedding model (with its cache).
        max_batch: Distinct uncached texts that close a batch.
        max_wait_ms: Longest time the first text of a batch waits.
        pending: Events restored from a snapshot (re-embedded on the next flush).
        on_batch: Called with a :class:`BatchReport` after each batch (metrics).
        text_of: The text an event needs embedded, or ``None`` (default
            :func:`~operators.embedding.embedding_text`); the flow skips event types whose
            vector the profile would ignore.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        max_batch: int,
        max_wait_ms: int,
        pending: list[Event] | None = None,
        opened_ms: int | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        text_of: Callable[[Event], str | None] = embedding_text,
    ) -> None:
        self.encoder = encoder
        self.text_of = text_of
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.on_batch = on_batch
        self._queue: list[tuple[Event, str | None, np.ndarray | None]] = []
        self._waiting_users: Counter[str] = Counter()
        self._texts: set[str] = set()
        self._opened_ms = opened_ms
        for event in pending or []:
            self._enqueue(event, text_of(event), None)

    def pending(self) -> list[Event]:
        """Events still waiting, in arrival order (what a snapshot must keep)."""
        return [event for event, _, _ in self._queue]

    @property
    def opened_ms(self) -> int | None:
        return self._opened_ms

    def due_ms(self) -> int | None:
        """When the current batch must close, or ``None`` if nothing waits for the model."""
        return None if self._opened_ms is None else self._opened_ms + self.max_wait_ms

    def add(self, event: Event, now_ms: int) -> list[EmbeddedEvent]:
        """Take one event; return the events that can go on now (possibly a whole batch)."""
        text = self.text_of(event)
        vector = self.encoder.lookup(text) if text is not None else None
        needs_model = text is not None and vector is None
        if not needs_model and self._waiting_users[event.user_id] == 0:
            return [EmbeddedEvent(event, vector)]
        self._enqueue(event, text, vector)
        if needs_model and self._opened_ms is None:
            self._opened_ms = now_ms
        if len(self._texts) >= self.max_batch:
            return self.flush(now_ms)
        return []

    def _enqueue(self, event: Event, text: str | None, vector: np.ndarray | None) -> None:
        self._queue.append((event, text, vector))
        self._waiting_users[event.user_id] += 1
        if text is not None and vector is None:
            self._texts.add(text)

    def flush(self, now_ms: int) -> list[EmbeddedEvent]:
        """Embed every waiting text in one call and release the queue in arrival order."""
        if not self._queue:
            return []
        texts = sorted(self._texts)
        started = time.perf_counter()
        vectors = dict(zip(texts, self.encoder.encode(texts), strict=True)) if texts else {}
        if self.on_batch is not None and texts:
            wait_ms = now_ms - (self._opened_ms if self._opened_ms is not None else now_ms)
            self.on_batch(BatchReport(len(texts), wait_ms, time.perf_counter() - started))
        released = [
            EmbeddedEvent(event, vector if vector is not None or text is None else vectors[text])
            for event, text, vector in self._queue
        ]
        self._queue.clear()
        self._waiting_users.clear()
        self._texts.clear()
        self._opened_ms = None
        return released
