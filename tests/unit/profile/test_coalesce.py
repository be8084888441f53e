"""Coalesced deltas: exact materialisation, at any emission boundaries, and across a restart."""

from __future__ import annotations

import random

import numpy as np
import pytest

from operators.ingest import Event
from operators.ingest.units import DAY_MS
from operators.profile import (
    Applied,
    Outcome,
    PendingChanges,
    ProfileDelta,
    ProfileParams,
    ProfileView,
    UserState,
    apply_event,
    decode_state,
    decode_vector,
    emit,
    encode_state,
    encode_vector,
    erase,
    materialize,
    note,
    parse_windows,
    public_fields,
    published,
)
from operators.recsys import ItemInteraction, ItemModel, ScorerParams, train_item_model
from operators.text import TextSignals

T0 = 1_714_564_800_000
# Small caps, so that keys come and go from the capped maps between two deltas.
PARAMS = ProfileParams(
    max_affinities=4, max_keywords=4, full_every=25, windows=parse_windows("1h:5m,1d:1h")
)
KINDS = ["view", "click", "search", "purchase", "add_to_cart", "login", "review", "refund"]


def item_model() -> ItemModel:
    sequences = [[ItemInteraction(f"i{(u + k) % 30}") for k in range(8)] for u in range(40)]
    attributes = {f"i{i}": [f"a{i % 9}", f"b{i % 4}"] for i in range(30)}
    return train_item_model(sequences, attributes, params=ScorerParams())


ITEMS = item_model()


def stream(seed: int, n: int) -> list[tuple[Event, np.ndarray | None, TextSignals | None]]:
    rng = random.Random(seed)
    rows = []
    clock = T0
    for i in range(n):
        clock += rng.choice([1_000, 60_000, 3_600_000, 3_600_000, DAY_MS // 3])
        ts = clock - rng.randrange(0, 1_200_000) if rng.random() < 0.1 else clock
        kind = rng.choice(KINDS)
        text = f"words {i % 7}" if kind in ("search", "review") else None
        event = Event(
            f"e{i}",
            "u1",
            ts,
            kind,
            item_id=None if kind in ("login", "search") else f"i{rng.randrange(40)}",
            category=f"c{rng.randrange(9)}",
            brand=f"b{rng.randrange(9)}",
            price=2.5 if kind in ("purchase", "refund") else None,
            text=text,
            session_id=f"s{i // 6}",
        )
        vector = None
        if kind not in ("login", "refund"):
            vector = np.random.default_rng(i).standard_normal(4).astype(np.float32)
            vector /= np.linalg.norm(vector)
        words = TextSignals([(f"w{rng.randrange(12)}", 0.5), (f"w{rng.randrange(12)}", 0.5)], 0.3)
        rows.append((event, vector, words if text else None))
    return rows


class Producer:
    """The flow's per-user logic without Bytewax: apply events, emit when told to."""

    def __init__(self, state: bytes | None = None, params: ProfileParams = PARAMS) -> None:
        self.params = params
        self.emitted = state
        self.state: UserState | None = None
        self.pending: PendingChanges | None = None

    def apply(self, row: tuple[Event, np.ndarray | None, TextSignals | None]) -> None:
        event, vector, signals = row
        if self.state is None and self.emitted is not None:
            self.state = decode_state(self.emitted)
        self.pending = self.pending or PendingChanges(due_ms=0)
        self.state, outcome = apply_event(
            self.state, event, vector, self.params, dim=4, signals=signals, items=ITEMS,
            dropped=self.pending.dropped,
        )  # fmt: skip
        note(self.pending, event, in_windows=outcome is Outcome.APPLIED)

    def emit(self) -> ProfileDelta | None:
        if self.pending is None or self.state is None:
            return None
        before = None if self.emitted is None else published(decode_state(self.emitted))
        delta = emit(self.state, before, self.pending, self.params, now_ms=0)
        self.emitted, self.state, self.pending = encode_state(self.state), None, None
        return delta


def run(rows: list, boundaries: set[int], producer: Producer | None = None) -> list[ProfileDelta]:
    producer = producer or Producer()
    deltas = []
    for i, row in enumerate(rows):
        producer.apply(row)
        if i in boundaries or i == len(rows) - 1:
            delta = producer.emit()
            assert delta is not None
            deltas.append(delta)
    return deltas


def reference(rows: list, params: ProfileParams = PARAMS) -> UserState:
    state = None
    for event, vector, signals in rows:
        state, _ = apply_event(state, event, vector, params, dim=4, signals=signals, items=ITEMS)
    assert state is not None
    return state


def assert_equals_state(view: ProfileView, state: UserState) -> None:
    profile = view.profiles["u1"]
    assert profile.version == state.profile.version
    assert profile.fields == public_fields(state.profile, PARAMS)
    # Exactly what the encoding carries, not just close to it.
    carried = decode_vector(encode_vector(state.profile.interest, PARAMS.vector_encoding))
    assert np.array_equal(profile.interest, carried)


@pytest.mark.parametrize("seed", range(8))
def test_coalesced_deltas_materialise_to_exactly_the_state(seed: int) -> None:
    rows = stream(seed, 240)
    rng = random.Random(seed)
    boundaries = {i for i in range(len(rows)) if rng.random() < 0.3}
    deltas = run(rows, boundaries)
    assert sum(len(d.event_ids) for d in deltas) == len(rows)  # every event exactly once
    assert [i for d in deltas for i in d.event_ids] == [row[0].event_id for row in rows]
    assert deltas[0].kind == "full" and "full" in [d.kind for d in deltas[1:]]
    view = ProfileView()
    assert all(view.apply(d) is Applied.APPLIED for d in deltas)
    assert_equals_state(view, reference(rows))
    # a consumer that joins late starts at a full delta and still ends exact
    late = ProfileView()
    fulls = [i for i, d in enumerate(deltas) if d.kind == "full"]
    for d in deltas[fulls[-1] :]:
        late.apply(d)
    assert_equals_state(late, reference(rows))


@pytest.mark.parametrize("seed", range(12))
def test_deltas_resent_with_other_boundaries_after_a_restart_land_exactly(seed: int) -> None:
    """A restart resumes from a snapshot and re-sends what followed it, coalesced differently.

    The consumer has the first run's deltas up to some point past the snapshot; the resent
    ones overlap them with other boundaries. Every resent delta is stale or applies, never a
    gap, and the consumer ends on exactly the uninterrupted state.
    """
    rows = stream(100 + seed, 200)
    rng = random.Random(seed)
    first = {i for i in range(len(rows)) if rng.random() < 0.35}
    snapshot_at = sorted(first)[len(first) // 3]  # the snapshot follows this delta
    producer = Producer()
    head = run(rows[: snapshot_at + 1], {i for i in first if i <= snapshot_at}, producer)
    snapshot = producer.emitted
    tail_first_run = run(rows[snapshot_at + 1 :], {i - snapshot_at - 1 for i in first}, producer)
    second = {i for i in range(len(rows) - snapshot_at - 1) if rng.random() < 0.35}
    resent = run(rows[snapshot_at + 1 :], second, Producer(snapshot))

    seen_before_crash = rng.randrange(1, len(tail_first_run))
    view = ProfileView()
    for delta in [*head, *tail_first_run[:seen_before_crash]]:
        assert view.apply(delta) is Applied.APPLIED
    results = [view.apply(delta) for delta in resent]
    assert Applied.GAP not in results and Applied.APPLIED in results
    assert_equals_state(view, reference(rows))


def test_a_tombstone_covers_the_pending_events_and_erases() -> None:
    rows = stream(3, 10)
    producer = Producer()
    deltas = run(rows[:5], {1})
    for row in rows[5:]:
        producer.apply(row)
    goodbye = Event("bye", "u1", T0 + 99 * DAY_MS, "delete_user")
    tombstone = erase(producer.state, producer.pending, goodbye, PARAMS, now_ms=0)
    assert tombstone.kind == "tombstone" and tombstone.version == 6
    assert tombstone.event_ids == [*(row[0].event_id for row in rows[5:]), "bye"]
    assert "u1" not in materialize([*deltas, tombstone])


def test_a_patch_carries_what_changed_and_the_vector_only_when_it_moved() -> None:
    rows = stream(5, 30)
    producer = Producer()
    run(rows[:20], set(), producer)
    login = Event("l1", "u1", rows[19][0].ts_ms + 1, "login", session_id="s9")
    producer.apply((login, None, None))
    delta = producer.emit()
    assert delta is not None and delta.kind == "patch" and delta.base_version == 20
    assert delta.interest is None  # a login does not move the interest vector
    assert set(delta.changed) == {"counts", "windows", "last_seen_ms"}
    assert delta.changed["counts"] == {"login": rows_count(rows[:20], "login") + 1}


def rows_count(rows: list, kind: str) -> int:
    return sum(row[0].type == kind for row in rows)


def test_a_resent_patch_removes_a_key_that_came_and_went_since_its_base() -> None:
    """Base {a, b, c, d}; then e pushes d out; then f pushes e out.

    A consumer holding the middle version has ``e``; a resent patch from the base straight to
    the end must still delete it, though neither end of the patch has it.
    """
    params = ProfileParams(max_affinities=4)

    def row(i: int, kind: str, category: str) -> tuple[Event, None, None]:
        return Event(f"e{i}", "u1", T0 + i, kind, item_id="i", category=category), None, None

    base = [row(0, "purchase", "a"), row(1, "purchase", "b"), row(2, "purchase", "c")]
    base += [row(3, "view", "d")]
    first, middle, last = Producer(params=params), [row(4, "view", "e")], [row(5, "view", "f")]
    consumer = ProfileView()
    for delta in [*run(base, set(), first), *run(middle, set(), first)]:
        consumer.apply(delta)
    assert "e" in consumer.profiles["u1"].fields["category_affinity"]
    resent = Producer(params=params)
    run(base, set(), resent)
    (spanning,) = run(middle + last, set(), resent)
    assert spanning.kind == "patch" and spanning.base_version == 4
    assert spanning.changed["category_affinity"]["e"] is None
    assert consumer.apply(spanning) is Applied.APPLIED
    state = reference(base + middle + last, params)
    assert consumer.profiles["u1"].fields == public_fields(state.profile, params)
