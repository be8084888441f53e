"""The micro-batcher: batches close on size or wait, and no user is ever reordered."""

from __future__ import annotations

import numpy as np

from operators.batching import BatchReport, MicroBatcher
from operators.events import Event
from tests.conftest import HashEncoder


def search(i: int, user: str, text: str) -> Event:
    return Event(f"e{i}", user, i, "search", text=text)


def login(i: int, user: str) -> Event:
    return Event(f"e{i}", user, i, "login")


def test_batch_closes_at_max_size_with_distinct_texts() -> None:
    encoder, reports = HashEncoder(), []
    batcher = MicroBatcher(encoder, max_batch=3, max_wait_ms=1000, on_batch=reports.append)
    assert batcher.add(search(1, "a", "x"), 0) == []
    assert batcher.add(search(2, "b", "x"), 1) == []  # same text: one slot
    assert batcher.add(search(3, "c", "y"), 2) == []
    released = batcher.add(search(4, "d", "z"), 7)
    assert [r.event.event_id for r in released] == ["e1", "e2", "e3", "e4"]
    assert encoder.calls == [["x", "y", "z"]]
    assert reports == [BatchReport(size=3, wait_ms=7, embed_seconds=reports[0].embed_seconds)]
    assert np.array_equal(released[0].vector, released[1].vector)


def test_batch_is_due_after_max_wait_from_the_first_text() -> None:
    batcher = MicroBatcher(HashEncoder(), max_batch=100, max_wait_ms=50)
    assert batcher.due_ms() is None
    batcher.add(search(1, "a", "x"), 10)
    batcher.add(search(2, "b", "y"), 30)
    assert batcher.due_ms() == 60


def test_events_without_text_pass_unless_their_user_waits() -> None:
    batcher = MicroBatcher(HashEncoder(), max_batch=100, max_wait_ms=50)
    batcher.add(search(1, "a", "x"), 0)
    passed = batcher.add(login(2, "b"), 0)
    assert [(r.event.event_id, r.vector) for r in passed] == [("e2", None)]
    assert batcher.add(login(3, "a"), 0) == []  # waits behind a's search
    assert [r.event.event_id for r in batcher.flush(50)] == ["e1", "e3"]


def test_cached_texts_skip_the_batch() -> None:
    class Cached(HashEncoder):
        def lookup(self, text: str) -> np.ndarray | None:
            return self.encode([text])[0] if text == "hot" else None

    batcher = MicroBatcher(Cached(), max_batch=100, max_wait_ms=50)
    out = batcher.add(search(1, "a", "hot"), 0)
    assert [r.event.event_id for r in out] == ["e1"] and out[0].vector is not None


def test_per_user_order_survives_any_interleaving() -> None:
    rng = np.random.default_rng(4)
    batcher = MicroBatcher(HashEncoder(), max_batch=4, max_wait_ms=5)
    sent, released = [], []
    for i in range(2000):
        user = f"u{rng.integers(0, 12)}"
        ev = search(i, user, f"t{rng.integers(0, 30)}") if rng.random() < 0.4 else login(i, user)
        sent.append(ev)
        now = i
        due = batcher.due_ms()
        if due is not None and now >= due:
            released += batcher.flush(now)
        released += batcher.add(ev, now)
    released += batcher.flush(10_000)
    assert sorted(r.event.event_id for r in released) == sorted(e.event_id for e in sent)
    for user in {e.user_id for e in sent}:
        mine = [r.event.event_id for r in released if r.event.user_id == user]
        assert mine == [e.event_id for e in sent if e.user_id == user]


def test_restored_pending_events_are_embedded_on_flush() -> None:
    first = MicroBatcher(HashEncoder(), max_batch=100, max_wait_ms=50)
    first.add(search(1, "a", "x"), 3)
    first.add(login(2, "a"), 4)
    restored = MicroBatcher(
        HashEncoder(), 100, 50, pending=first.pending(), opened_ms=first.opened_ms
    )
    assert restored.due_ms() == 53
    out = restored.flush(60)
    assert [r.event.event_id for r in out] == ["e1", "e2"] and out[0].vector is not None
