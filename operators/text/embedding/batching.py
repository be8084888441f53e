"""Micro-batch texts across users for the embedding model.

The model is far faster on a batch of 64 texts than on 64 single texts. So a text whose
vector is not cached is not embedded on its own: :meth:`TextBatcher.vector` registers it and
returns ``None``, and the batch is embedded in one call once ``max_batch`` distinct texts wait
or the first has waited ``max_wait_ms``. Meanwhile the event that needs the vector -- and
every later event of the same user, whose updates must apply in the order the user acted --
waits in that user's own queue in the flow; other users go on. When the batch is due the
waiting users ask again and get their vectors.

While the model is still loading (:meth:`TextEncoder.ready` is false) batches are not closed:
texts keep joining the waiting one, its users wait, and everyone else goes on; the batch is
tried again every ``max_wait_ms``. Only the end of the input waits for the model.

The batcher holds no state worth recovering: the waiting events live in the users'
snapshots, and after a restart their texts are simply registered again. Time is passed in
(``now_ms``), so the logic is tested without sleeping.

>>> import numpy as np
>>> class Fake:
...     def lookup(self, text): return None
...     def ready(self): return True
...     def encode(self, texts): return np.ones((len(texts), 2), np.float32)
>>> batcher = TextBatcher(Fake(), max_batch=2, max_wait_ms=50)
>>> batcher.vector("red shoes", now_ms=0) is None, batcher.due_ms()
(True, 50)
>>> batcher.flush_due(now_ms=49), batcher.flush_due(now_ms=50)
(False, True)
>>> batcher.vector("red shoes", now_ms=51)
array([1., 1.], dtype=float32)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from operators.text.embedding.encoder import TextEncoder


@dataclass(frozen=True)
class BatchReport:
    """What one closed batch cost: distinct texts embedded, wait of the oldest, model time."""

    size: int
    wait_ms: int
    embed_seconds: float


class TextBatcher:
    """Collect uncached texts from every user of a process; embed them a batch at a time.

    Args:
        encoder: The embedding model (with its cache).
        max_batch: Distinct waiting texts that close a batch at once.
        max_wait_ms: Longest time the first text of a batch waits.
        on_batch: Called with a :class:`BatchReport` after each batch (metrics).

    Worker threads share one batcher; a batch is embedded under its lock. Vectors of the
    last few batches are kept until asked for, even with the encoder's cache turned off.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        max_batch: int,
        max_wait_ms: int,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.on_batch = on_batch
        self._waiting: dict[str, None] = {}  # an ordered set
        self._opened_ms: int | None = None
        self._retry_ms = 0  # while the model loads: when to try the waiting batch again
        self._ready: OrderedDict[str, np.ndarray] = OrderedDict()
        self._keep = max(4 * max_batch, 256)
        self._lock = threading.Lock()

    def vector(self, text: str, now_ms: int) -> np.ndarray | None:
        """The text's vector if it is cached or was just embedded; else register it: ``None``."""
        vector = self.encoder.lookup(text)
        if vector is None:
            vector = self._ready.get(text)
        if vector is not None:
            return vector
        with self._lock:
            if text not in self._ready:
                self._waiting[text] = None
                if self._opened_ms is None:
                    self._opened_ms = now_ms
                    self.encoder.ready()  # a lazy model starts loading now, not when due
                if len(self._waiting) >= self.max_batch and self.encoder.ready():
                    self._flush(now_ms)
            return self._ready.get(text)

    def due_ms(self) -> int | None:
        """When the waiting batch must be embedded, or ``None`` if no text waits."""
        opened = self._opened_ms
        return None if opened is None else max(opened + self.max_wait_ms, self._retry_ms)

    def flush_due(self, now_ms: int) -> bool:
        """Embed the waiting batch if it is due; whether it was."""
        with self._lock:
            due = self.due_ms()
            if due is None or now_ms < due:
                return False
            if not self.encoder.ready():
                self._retry_ms = now_ms + self.max_wait_ms
                return False
            self._flush(now_ms)
            return True

    def flush(self, now_ms: int) -> None:
        """Embed whatever waits now (at the end of the input)."""
        with self._lock:
            self._flush(now_ms)

    def _flush(self, now_ms: int) -> None:
        if not self._waiting:
            return
        texts = list(self._waiting)
        started = time.perf_counter()
        vectors = self.encoder.encode(texts)
        if self.on_batch is not None:
            opened = self._opened_ms if self._opened_ms is not None else now_ms
            self.on_batch(BatchReport(len(texts), now_ms - opened, time.perf_counter() - started))
        self._ready.update(zip(texts, vectors, strict=True))
        while len(self._ready) > self._keep:
            self._ready.popitem(last=False)
        self._waiting.clear()
        self._opened_ms = None
