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

With ``background=True`` a closed batch goes to the batcher's own thread, and the worker
threads go on with other users while the model works (torch releases the GIL); texts asked
for meanwhile fill the next batch, which the thread starts itself as soon as the model is
free, if it is full or its first text has waited ``max_wait_ms`` (else a worker closes it when
due). :meth:`TextBatcher.due_ms` then says when the batch in flight should be done (from how
long the last ones took), so its waiting users are woken about when their vectors are there.
A batch never holds more than ``max_batch`` texts: what waits beyond that goes in the next.

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

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from operators.text.embedding.encoder import TextEncoder

#: How often users waiting on a batch that takes longer than the last ones look again.
OVERDUE_POLL_MS = 2


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
        background: Embed on the batcher's own thread instead of the caller's.

    Worker threads share one batcher. Vectors of the last few batches are kept until asked
    for, even with the encoder's cache turned off.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        max_batch: int,
        max_wait_ms: int,
        on_batch: Callable[[BatchReport], None] | None = None,
        background: bool = False,
    ) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.on_batch = on_batch
        self._waiting: dict[str, int] = {}  # text -> when it was first asked for, in order
        self._retry_ms = 0  # while the model loads: when to try the waiting batch again
        self._ready: OrderedDict[str, np.ndarray] = OrderedDict()
        self._keep = max(4 * max_batch, 256)
        self._lock = threading.Lock()
        self._background = background
        self._model_free = threading.Condition(self._lock)
        #: The batch handed to the thread, with the time it was closed, until it is done.
        self._in_flight: tuple[list[str], int, int] | None = None  # texts, opened, closed
        self._submitted: set[str] = set()  # texts being embedded: not registered again
        self._embed_ms = max_wait_ms  # how long a batch takes, smoothed: when to look again
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError("the embedding model failed on its thread") from self._failure

    def vector(self, text: str, now_ms: int) -> np.ndarray | None:
        """The text's vector if it is cached or was just embedded; else register it: ``None``."""
        vector = self.encoder.lookup(text)
        if vector is None:
            vector = self._ready.get(text)
        if vector is not None:
            return vector
        with self._lock:
            self._raise_failure()
            if text not in self._ready and text not in self._submitted:
                if not self._waiting:
                    self.encoder.ready()  # a lazy model starts loading now, not when due
                self._waiting.setdefault(text, now_ms)
                if len(self._waiting) >= self.max_batch and self.encoder.ready():
                    self._flush(now_ms)
            return self._ready.get(text)

    def due_ms(self, now_ms: int = 0) -> int | None:
        """When to look again: the waiting batch is due, or the batch in flight should be
        done (from ``now_ms`` on, while it is late); ``None`` if no text waits."""
        flight = self._in_flight
        if flight is not None:  # nothing else can start before it is done
            return max(flight[2] + self._embed_ms, now_ms + OVERDUE_POLL_MS)
        opened = self._opened_ms()
        return None if opened is None else max(opened + self.max_wait_ms, self._retry_ms)

    def _opened_ms(self) -> int | None:
        """When the first waiting text was asked for; ``None`` if none waits."""
        return next(iter(self._waiting.values()), None)

    def flush_due(self, now_ms: int) -> bool:
        """Embed the waiting batch if it is due; whether it was."""
        with self._lock:
            self._raise_failure()
            if self._in_flight is not None:
                return False
            due = self.due_ms(now_ms)
            if due is None or now_ms < due:
                return False
            if not self.encoder.ready():
                self._retry_ms = now_ms + self.max_wait_ms
                return False
            self._flush(now_ms)
            return True

    def flush(self, now_ms: int) -> None:
        """Embed whatever waits now and wait for every batch being embedded (at the end of
        the input). Waiting batches run on this thread too, beside the model's own: the
        caller has nothing else to do, and a one-thread model leaves it a core."""
        with self._lock:
            while True:
                self._raise_failure()
                if self._waiting:
                    self._embed(*self._take(now_ms), now_ms, beside=True)
                elif self._submitted:  # the thread's batch, or another worker's
                    self._model_free.wait()
                else:
                    return

    def _flush(self, now_ms: int) -> None:
        """Close the waiting batch (under the lock): embed it here, or hand it to the
        thread if the model is free (else it keeps filling until it is)."""
        if not self._waiting:
            return
        if not self._background:
            while self._waiting:
                self._embed(*self._take(now_ms), now_ms)
        elif self._in_flight is None:
            self._submit(now_ms)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="embedder", daemon=True)
                self._thread.start()
            self._model_free.notify_all()

    def _take(self, now_ms: int) -> tuple[list[str], int]:
        """The first ``max_batch`` waiting texts, and when the first of them was asked for."""
        opened = self._opened_ms()
        texts = list(itertools.islice(self._waiting, self.max_batch))
        for text in texts:
            del self._waiting[text]
        return texts, now_ms if opened is None else opened

    def _submit(self, now_ms: int) -> None:
        """Hand the next batch to the model's thread (under the lock)."""
        texts, opened = self._take(now_ms)
        self._in_flight = (texts, opened, now_ms)
        self._submitted.update(texts)

    def _embed(
        self, texts: list[str], opened_ms: int, closed_ms: int, beside: bool = False
    ) -> None:
        """Embed ``texts`` on this thread and keep their vectors, under the lock: other
        workers asking meanwhile wait for them. ``beside``: the lock is released while the
        model runs, so the model's own thread goes on beside this one."""
        if not beside:
            self._keep_vectors(texts, *self._encode(texts), opened_ms, closed_ms)
            return
        self._submitted.update(texts)
        self._lock.release()
        try:
            vectors, took = self._encode(texts)
        finally:
            self._lock.acquire()
            self._submitted.difference_update(texts)
            self._model_free.notify_all()
        self._keep_vectors(texts, vectors, took, opened_ms, closed_ms)

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, float]:
        """The texts' vectors, and the seconds the model took."""
        started = time.perf_counter()
        vectors = self.encoder.encode(texts)
        return vectors, time.perf_counter() - started

    def _keep_vectors(
        self, texts: list[str], vectors: np.ndarray, took: float, opened_ms: int, closed_ms: int
    ) -> None:
        """Keep a batch's vectors until asked for (under the lock), and report the batch."""
        self._ready.update(zip(texts, vectors, strict=True))
        while len(self._ready) > self._keep:
            self._ready.popitem(last=False)
        if self.on_batch is not None:
            self.on_batch(BatchReport(len(texts), closed_ms - opened_ms, took))

    def _work(self) -> None:
        """The embedding thread: one batch at a time, the lock released while the model runs."""
        with self._lock:
            while True:
                while self._in_flight is None:
                    self._model_free.wait()
                texts, opened, closed = self._in_flight
                self._lock.release()
                try:
                    vectors, took = self._encode(texts)
                except BaseException as exc:  # the workers raise it: the flow restarts
                    self._lock.acquire()
                    self._failure = exc
                    self._in_flight = None
                    self._submitted.difference_update(texts)
                    self._model_free.notify_all()
                    return
                self._lock.acquire()
                self._keep_vectors(texts, vectors, took, opened, closed)
                self._embed_ms = round(0.7 * self._embed_ms + 0.3 * took * 1000) + 1
                self._in_flight = None
                self._submitted.difference_update(texts)
                # Keep the model busy: the texts that came meanwhile go next if they are due
                # (``now`` on the callers' clock: the batch closed, then the model took this).
                now_ms = closed + round(took * 1000)
                due = self.due_ms(now_ms)
                if len(self._waiting) >= self.max_batch or (due is not None and due <= now_ms):
                    self._submit(now_ms)
                self._model_free.notify_all()
