"""The text batcher: batches close on size or wait, one slot per distinct text, cache first."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from operators.text.embedding import BatchReport, TextBatcher
from operators.text.embedding.batching import OVERDUE_POLL_MS
from tests.support.fakes import HashEncoder


class CachingEncoder(HashEncoder):
    """A hash encoder with a cache, as the real Embedder has."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[str, np.ndarray] = {}

    def lookup(self, text: str) -> np.ndarray | None:
        return self.cache.get(text)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = super().encode(texts)
        self.cache.update(zip(texts, vectors, strict=True))
        return vectors


def test_batch_closes_at_max_size_with_distinct_texts() -> None:
    encoder, reports = HashEncoder(), list[BatchReport]()
    batcher = TextBatcher(encoder, max_batch=3, max_wait_ms=1000, on_batch=reports.append)
    assert batcher.vector("x", 0) is None
    assert batcher.vector("x", 1) is None  # the same text takes one slot
    assert batcher.vector("y", 2) is None
    vector = batcher.vector("z", 7)  # the third distinct text closes the batch at once
    assert vector is not None
    assert encoder.calls == [["x", "y", "z"]]
    assert reports == [BatchReport(size=3, wait_ms=7, embed_seconds=reports[0].embed_seconds)]
    again = batcher.vector("x", 8)
    assert again is not None and np.array_equal(again, encoder.encode(["x"])[0])
    assert batcher.due_ms() is None


def test_batch_is_due_after_max_wait_from_the_first_text() -> None:
    encoder = HashEncoder()
    batcher = TextBatcher(encoder, max_batch=100, max_wait_ms=50)
    assert batcher.due_ms() is None
    batcher.vector("x", 10)
    batcher.vector("y", 30)
    assert batcher.due_ms() == 60
    assert not batcher.flush_due(59) and encoder.calls == []
    assert batcher.flush_due(60)
    assert encoder.calls == [["x", "y"]]
    assert batcher.vector("y", 61) is not None


class LoadingEncoder(HashEncoder):
    """A hash encoder whose model is still loading until ``loaded`` is set."""

    loaded = False

    def ready(self) -> bool:
        return self.loaded


def test_no_batch_closes_while_the_model_loads_and_the_wait_is_kept() -> None:
    encoder, reports = LoadingEncoder(), list[BatchReport]()
    batcher = TextBatcher(encoder, max_batch=2, max_wait_ms=50, on_batch=reports.append)
    for i, text in enumerate(["x", "y", "z"]):  # past max_batch: nothing runs yet
        assert batcher.vector(text, now_ms=10 + i) is None
    assert not batcher.flush_due(60) and batcher.due_ms() == 110  # tried again a wait later
    assert not batcher.flush_due(109)
    encoder.loaded = True
    assert batcher.flush_due(110)  # all that waited, a batch of at most two at a time
    assert encoder.calls == [["x", "y"], ["z"]] and reports[0].wait_ms == 100
    assert batcher.vector("z", 111) is not None and batcher.due_ms() is None


def test_cached_texts_never_wait_for_a_batch() -> None:
    encoder = CachingEncoder()
    encoder.encode(["known"])
    batcher = TextBatcher(encoder, max_batch=100, max_wait_ms=50)
    assert batcher.vector("known", 0) is not None
    assert batcher.due_ms() is None


def test_results_outlive_the_batch_even_without_a_cache() -> None:
    batcher = TextBatcher(HashEncoder(), max_batch=2, max_wait_ms=50)
    batcher.vector("a", 0)
    batcher.vector("b", 0)
    for i in range(300):  # later batches push "a" out only after a few hundred texts
        batcher.vector(f"t{i}", 1)
    batcher.flush(2)
    assert batcher.vector("t299", 3) is not None
    assert batcher.vector("a", 3) is None  # long gone: registered again
    assert batcher.due_ms() == 53


class GatedEncoder(HashEncoder):
    """A hash encoder that holds each batch until the test opens the gate."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()
        self.fail = fail

    def encode(self, texts: list[str]) -> np.ndarray:
        self.started.set()
        assert self.gate.wait(10)
        if self.fail:
            raise ValueError("out of memory")
        return super().encode(texts)


def test_in_the_background_the_model_works_while_the_next_batch_fills() -> None:
    encoder, reports = GatedEncoder(), list[BatchReport]()
    batcher = TextBatcher(encoder, 2, max_wait_ms=50, on_batch=reports.append, background=True)
    assert batcher.vector("a", 0) is None
    assert batcher.vector("b", 1) is None  # full: handed to the thread, the caller goes on
    assert encoder.started.wait(10)
    assert batcher.vector("a", 2) is None  # in flight: not registered again ...
    assert batcher.vector("c", 3) is None  # ... while new texts fill the next batch
    assert batcher.vector("d", 4) is None
    assert batcher.due_ms(now_ms=5) == max(1 + 50, 5 + OVERDUE_POLL_MS)  # when it should be done
    assert not batcher.flush_due(1_000)  # the model is busy: the next batch waits for it
    encoder.gate.set()
    batcher.flush(2_000)  # embeds the rest here, beside the batch in flight, and waits
    assert sorted(encoder.calls) == [["a", "b"], ["c", "d"]]
    assert all(batcher.vector(t, 2_001) is not None for t in "abcd")
    assert [r.size for r in reports] == [2, 2] and batcher.due_ms() is None


def test_a_model_that_fails_on_its_thread_fails_the_workers() -> None:
    encoder = GatedEncoder(fail=True)
    batcher = TextBatcher(encoder, 1, max_wait_ms=50, background=True)
    batcher.vector("a", 0)
    encoder.gate.set()
    with pytest.raises(RuntimeError, match="failed on its thread"):
        batcher.flush(1)


def test_the_model_thread_starts_the_next_due_batch_itself() -> None:
    encoder, reports = GatedEncoder(), list[BatchReport]()
    # A long wait: "g" (below) must not fall due however slowly the model runs here.
    batcher = TextBatcher(encoder, 2, 10_000, on_batch=reports.append, background=True)
    batcher.vector("a", 0)
    batcher.vector("b", 1)  # full: in flight
    assert encoder.started.wait(10)
    for i, text in enumerate("cdefg"):  # five wait while the model works: batches of two
        batcher.vector(text, 2 + i)
    encoder.gate.set()
    for _ in range(1_000):  # no worker asks: the thread goes on with the full batches
        with batcher._lock:
            if len(encoder.calls) == 3 and batcher._in_flight is None:
                break
        threading.Event().wait(0.01)
    assert encoder.calls == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert batcher.due_ms() == 6 + 10_000  # "g" alone waits for its wait (or more texts)
    assert batcher.flush_due(10_006)
    batcher.flush(10_007)
    assert encoder.calls[-1] == ["g"] and [r.size for r in reports] == [2, 2, 2, 1]


def test_at_the_end_a_worker_waits_for_a_batch_another_worker_embeds() -> None:
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder, 2, max_wait_ms=50)
    batcher.vector("a", 0)
    first = threading.Thread(target=batcher.flush, args=(1,))
    first.start()  # one worker embeds "a" at the end of the input, beside the lock
    assert encoder.started.wait(10)
    assert batcher.vector("a", 2) is None  # being embedded: not registered again
    second = threading.Thread(target=batcher.flush, args=(3,))
    second.start()  # nothing waits, but "a" is not there yet: it waits, no busy loop
    second.join(0.2)
    assert second.is_alive()
    encoder.gate.set()
    first.join(10)
    second.join(10)
    assert not second.is_alive() and batcher.vector("a", 4) is not None
    assert encoder.calls == [["a"]]
