"""Per-user windows against a brute-force recomputation from the raw events."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from operators.ingest import Event
from operators.ingest.units import HOUR_MS, MINUTE_MS
from operators.profile import WindowSpec, parse_duration_ms, parse_windows
from operators.profile.windows import (
    LAST_ITEMS,
    MAX_DISTINCT,
    add,
    initialize,
    is_late,
    result,
    window_range,
)

T0 = 1_714_564_800_000
SPECS = parse_windows("1h:5m,24h:1h,7d:6h")
KINDS = ["view", "click", "purchase", "refund", "login", "add_to_cart"]


def brute_force(
    events: list[Event], specs: tuple[WindowSpec, ...], lateness_ms: int
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Apply the documented late-data policy, then aggregate every window from scratch."""
    accepted: list[Event] = []
    late: list[str] = []
    latest = 0
    for event in events:
        if latest and event.ts_ms < latest - lateness_ms:
            late.append(event.event_id)
            continue
        accepted.append(event)
        latest = max(latest, event.ts_ms)
    windows = {}
    for spec in specs:
        start = window_range(latest, spec)[0]
        inside = [e for e in accepted if e.ts_ms >= start]
        newest_item: dict[str, int] = {}
        for e in inside:
            if e.item_id is not None:
                newest_item[e.item_id] = max(newest_item.get(e.item_id, 0), e.ts_ms)
        windows[spec.name] = {
            "from_ms": start,
            "counts": dict(Counter(e.type for e in inside)),
            "spend": sum(e.price * e.quantity for e in inside if e.type == "purchase" and e.price),
            "refunded": sum(e.price * e.quantity for e in inside if e.type == "refund" and e.price),
            "items": len(newest_item),
            "categories": len({e.category for e in inside if e.category is not None}),
            "sessions": len({e.session_id for e in inside if e.session_id is not None}),
            "last_items": sorted(newest_item, key=lambda i: -newest_item[i])[:LAST_ITEMS],
        }
    return windows, late


def random_stream(seed: int, n: int, items: int, lateness_ms: int) -> list[Event]:
    """Mostly in order, with gaps of minutes to days and some events arriving out of order."""
    rng = random.Random(seed)
    events, clock = [], T0
    for i in range(n):
        if rng.random() < 0.15:  # out of order: some within the allowed lateness, some beyond
            ts = clock - rng.randrange(1, 3 * lateness_ms)
        else:
            clock += rng.choice(
                [rng.randrange(1, 10 * MINUTE_MS), rng.randrange(HOUR_MS, 30 * HOUR_MS)]
            )
            ts = clock
        kind = rng.choice(KINDS)
        events.append(
            Event(
                f"e{i}",
                "u",
                ts + i % 7,  # distinct times, so "newest item" has no ties
                kind,
                item_id=None if kind == "login" else f"i{rng.randrange(items)}",
                category=None if kind == "login" else f"c{rng.randrange(6)}",
                price=round(rng.uniform(1, 200), 2) if kind in ("purchase", "refund") else None,
                quantity=rng.randrange(1, 4),
                session_id=f"s{i // 5}",
            )
        )
    return events


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("lateness_ms", [0, 10 * MINUTE_MS, 2 * HOUR_MS])
def test_windows_equal_a_brute_force_recomputation(seed: int, lateness_ms: int) -> None:
    events = random_stream(seed, 300, items=40, lateness_ms=lateness_ms or 10 * MINUTE_MS)
    state = initialize(SPECS)
    late = []
    for i, event in enumerate(events):
        if not add(state, SPECS, event, lateness_ms):
            late.append(event.event_id)
        if i % 37 == 0 or i == len(events) - 1:  # check along the way, not only at the end
            expected, expected_late = brute_force(events[: i + 1], SPECS, lateness_ms)
            got = result(state, SPECS)
            for name, want in expected.items():
                have = dict(got[name])
                assert have.pop("spend") == pytest.approx(want.pop("spend"), abs=1e-6)
                assert have.pop("refunded") == pytest.approx(want.pop("refunded"), abs=1e-6)
                assert have == want, (name, i)
            assert late == expected_late
    assert late, "the stream must exercise the late-data path"


def test_state_stays_bounded_and_distinct_counts_saturate_at_the_cap() -> None:
    specs = parse_windows("1h:5m,7d:6h")
    state = initialize(specs)
    for i in range(5_000):  # a bot: a new item, category and session every second
        event = Event(
            f"e{i}",
            "u",
            T0 + i * 1_000,
            "click",
            item_id=f"i{i}",
            category=f"c{i}",
            session_id=f"s{i}",
        )
        assert add(state, specs, event, 0)
    windows = result(state, specs)
    one_hour_ago = window_range(state.latest_ms, specs[0])[0]  # 55-60 minutes back
    assert windows["1h"]["counts"] == {"click": (T0 + 5_000_000 - one_hour_ago) // 1_000}
    assert windows["7d"]["counts"] == {"click": 5_000}
    for name in ("1h", "7d"):
        assert windows[name]["items"] == windows[name]["categories"] == MAX_DISTINCT
    assert windows["7d"]["last_items"] == [f"i{i}" for i in range(4_999, 4_999 - LAST_ITEMS, -1)]
    assert len(state.items) == len(state.categories) == len(state.sessions) == MAX_DISTINCT
    assert [len(ring) for ring in state.rings] <= [12, 28]


def test_old_buckets_and_keys_leave_when_time_moves_on() -> None:
    state = initialize(SPECS)
    add(state, SPECS, Event("a", "u", T0, "purchase", item_id="i1", price=5.0), 0)
    add(state, SPECS, Event("b", "u", T0 + 8 * 24 * HOUR_MS, "login"), 0)
    assert [len(ring) for ring in state.rings] == [1, 1, 1]
    assert state.items == {}
    windows = result(state, SPECS)
    assert windows["7d"]["spend"] == 0.0 and windows["7d"]["counts"] == {"login": 1}


def test_an_event_older_than_a_span_but_on_time_counts_in_the_longer_spans() -> None:
    state = initialize(SPECS)
    add(state, SPECS, Event("a", "u", T0 + 5 * HOUR_MS, "view", item_id="i1"), 0)
    assert add(state, SPECS, Event("b", "u", T0, "view", item_id="i2"), 6 * HOUR_MS)
    windows = result(state, SPECS)
    assert windows["1h"]["counts"] == {"view": 1}
    assert windows["24h"]["counts"] == {"view": 2}
    assert windows["24h"]["last_items"] == ["i1", "i2"]


@pytest.mark.parametrize(
    ("text", "error"),
    [("1h:7m", "divide"), ("1x", "duration"), ("1h,1h", "repeat"), ("0m", "duration")],
)
def test_window_specs_are_checked(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_windows(text)


def test_durations_and_late_boundary() -> None:
    assert parse_duration_ms("90s") == 90_000
    assert parse_windows("") == ()
    assert not is_late(T0 - 10, T0, 10) and is_late(T0 - 11, T0, 10)
    state = initialize(())
    assert add(state, (), Event("a", "u", T0, "view", item_id="i"), 0)
    assert result(state, ()) == {}
