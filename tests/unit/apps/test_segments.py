"""Segments and RFM: every condition kind, time as it passes, transitions, and batch checks."""

from __future__ import annotations

import copy
import json
import operator
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dataflow.eval import segments as segments_eval
from dataflow.eval.cdnow import Purchase
from dataflow.sim import generate_events
from operators.apps.segments import (
    RFM_GROUPS,
    RfmCuts,
    SegmentBook,
    SegmentTransition,
    catch_up,
    evaluate,
    exit_all,
    load_segment_book,
    memberships_from_transitions,
    next_check_ms,
    parse_segment_book,
    profile_rfm,
    rfm_cut_points,
    rfm_group,
    rfm_score,
    update_memberships,
)
from operators.ingest import Event, parse_event
from operators.ingest.units import DAY_MS, HOUR_MS, MINUTE_MS
from operators.profile import (
    ProfileDelta,
    ProfileParams,
    UserProfile,
    apply_event,
    delta_to_json,
    encode_vector,
    parse_windows,
)
from operators.profile.windows import (
    add,
    count_as_of,
    initialize,
    next_count_flip_ms,
    next_spend_flip_ms,
    result,
    span_index,
    spend_as_of,
)
from tests.support.cli import profilestream

T0 = 1_717_200_000_000  # 2024-06-01T00:00:00Z: whole days, hours and 6-hour steps
PARAMS = ProfileParams()
SPECS = PARAMS.windows  # 1h:5m, 24h:1h, 7d:6h
CUTS: dict[str, Any] = {
    "recency_days": [2, 4, 7, 10],
    "frequency": [1, 1, 2, 4],
    "monetary": [50, 100, 200, 500],
}
RFM = RfmCuts((2, 4, 7, 10), (1, 1, 2, 4), (50, 100, 200, 500))


def fold(*events: tuple[int, str, dict[str, Any]], user: str = "u1") -> UserProfile:
    """A profile from ``(time, type, fields)`` events, through the real profile step."""
    state = None
    for n, (ts, kind, fields) in enumerate(events):
        event = Event(f"{user}-e{n}", user, ts, kind, **fields)
        state, _ = apply_event(state, event, None, PARAMS, dim=4)
    assert state is not None
    return state.profile


def book_of(when: Any, *, rfm: dict[str, Any] | None = None) -> SegmentBook:
    raw: dict[str, Any] = {"segments": {"s": {"description": "test", "when": when}}}
    if rfm is not None:
        raw["rfm"] = rfm
    return parse_segment_book(json.dumps(raw))


def holds(when: Any, profile: UserProfile, now: int = T0) -> bool:
    return "s" in evaluate(book_of(when, rfm=CUTS), profile, SPECS, now)


# A buyer: first seen 10 days ago (Dresses), bought 2 Dresses then, a Knit 3 days ago, carted a
# Knit 2 hours ago and looked at one 30 minutes ago (top category Knits). Spend 80 + 25.5.
BUYER = fold(
    (T0 - 10 * DAY_MS, "view", {"item_id": "d1", "category": "Dresses"}),
    (T0 - 10 * DAY_MS + HOUR_MS, "purchase", {"item_id": "d1", "category": "Dresses", "price": 40.0,
                                           "quantity": 2}),
    (T0 - 3 * DAY_MS, "purchase", {"item_id": "k1", "category": "Knits", "price": 25.5}),
    (T0 - 2 * HOUR_MS, "add_to_cart", {"item_id": "k2", "category": "Knits"}),
    (T0 - 30 * MINUTE_MS, "view", {"item_id": "k2", "category": "Knits"}),
)  # fmt: skip
# Looked once, never bought.
LOOKER = fold((T0 - HOUR_MS, "view", {"item_id": "d1", "category": "Dresses"}), user="u2")


def test_the_fixture_profiles_are_what_the_table_assumes() -> None:
    assert BUYER.counts == {"view": 2, "purchase": 2, "add_to_cart": 1}
    assert BUYER.spend == 105.5 and BUYER.last_purchase_ms == T0 - 3 * DAY_MS
    assert max(BUYER.category_affinity, key=BUYER.category_affinity.__getitem__) == "Knits"
    assert LOOKER.last_purchase_ms == 0 and LOOKER.rfm == ""


@pytest.mark.parametrize(
    ("when", "buyer", "looker"),
    [
        # comparisons on scalars and map keys
        ({"field": "spend", "op": "==", "value": 105.5}, True, False),
        ({"field": "spend", "op": "!=", "value": 105.5}, False, True),
        ({"field": "spend", "op": ">=", "value": 105.5}, True, False),
        ({"field": "spend", "op": ">", "value": 105.5}, False, False),
        ({"field": "spend", "op": "<=", "value": 105.5}, True, True),
        ({"field": "spend", "op": "<", "value": 105.5}, False, True),
        ({"field": "counts.purchase", "op": ">=", "value": 2}, True, False),
        ({"field": ["counts", "view"], "op": "==", "value": 2}, True, False),
        ({"field": "spend", "op": "between", "value": [105.5, 200]}, True, False),
        ({"field": "spend", "op": "between", "value": [0, 105.5]}, True, True),
        ({"field": "spend", "op": "between", "value": [0, 105.4]}, False, True),
        ({"field": "user_id", "op": "in", "value": ["u1", "u3"]}, True, False),
        ({"field": "counts.view", "op": "in", "value": [1, 3]}, False, True),
        ({"field": "category_affinity.Knits", "op": ">", "value": 0}, True, False),
        # a missing key or timestamp is false for every comparison, != too; `not` inverts
        ({"field": "counts.review", "op": "!=", "value": 1}, False, False),
        ({"field": "counts.review", "op": "<", "value": 1}, False, False),
        ({"not": {"field": "counts.review", "op": ">=", "value": 1}}, True, True),
        ({"field": "last_purchase_ms", "op": ">=", "value": 0}, True, False),
        ({"field": "user_id", "op": ">", "value": 3}, False, False),  # not comparable: false
        ({"exists": "counts.purchase"}, True, False),
        ({"exists": "last_purchase_ms"}, True, False),
        ({"exists": "first_seen_ms"}, True, True),
        ({"exists": "brand_affinity.Nobody"}, False, False),
        # top category: the largest affinity
        ({"top_category": "Knits"}, True, False),
        ({"top_category": "Dresses"}, False, True),
        ({"top_category": "Blouses"}, False, False),
        ({"top_category": ["Knits", "Dresses"]}, True, True),
        # windows as of now (T0): the cart is in the day but not in the last hour
        ({"count": "add_to_cart", "window": "24h", "op": ">", "value": 0}, True, False),
        ({"count": "add_to_cart", "window": "1h", "op": "==", "value": 0}, True, True),
        ({"count": "view", "window": "1h", "op": "==", "value": 1}, True, False),  # 1h ago: out
        ({"count": "purchase", "window": "7d", "op": "between", "value": [1, 1]}, True, False),
        ({"window_spend": "7d", "op": "==", "value": 25.5}, True, False),
        ({"window_spend": "24h", "op": ">", "value": 0}, False, False),
        # time since a timestamp; a never-set one is missing
        ({"since": "last_purchase_ms", "op": ">=", "value": "3d"}, True, False),
        ({"since": "last_purchase_ms", "op": ">", "value": "3d"}, False, False),
        ({"since": "last_purchase_ms", "op": "<", "value": 3 * DAY_MS + 1}, True, False),
        ({"not": {"since": "last_purchase_ms", "op": ">=", "value": "30d"}}, True, True),
        ({"since": "first_seen_ms", "op": "between", "value": ["1h", "10d"]}, True, True),
        ({"since": "last_seen_ms", "op": "<", "value": "31m"}, True, False),
        # RFM: 3 days (R 4), 2 purchases (F 3), 105.5 (M 3) -> FM 3: potential_loyalist
        ({"rfm_group": "potential_loyalist"}, True, False),
        ({"rfm_group": ["champions", "loyal"]}, False, False),
        ({"not": {"rfm_group": "lost"}}, True, True),
        # structure
        ({"all": [{"top_category": "Knits"}, {"exists": "counts.purchase"}]}, True, False),
        ({"any": [{"exists": "counts.review"}, {"exists": "counts.view"}]}, True, True),
        ({"all": [{"exists": "counts.view"}] * 3}, True, True),
        ({"any": [{"exists": "counts.review"}] * 3}, False, False),
        ({"any": [{"exists": "counts.review"}]}, False, False),
        ({"not": {"not": {"exists": "counts.purchase"}}}, True, False),
    ],
)
def test_conditions(when: dict[str, Any], buyer: bool, looker: bool) -> None:
    assert (holds(when, BUYER), holds(when, LOOKER)) == (buyer, looker)


@pytest.mark.parametrize(
    "when",
    [
        {"field": "counts.purchase", "op": "==", "value": 1},
        {"field": "counts.purchase", "op": "!=", "value": 1},
        {"field": "counts.purchase", "op": "in", "value": [1]},
        {"field": "counts.purchase", "op": "between", "value": [0, 9]},
        {"exists": "counts.purchase"},
        {"top_category": "Dresses"},
    ],
)
def test_none_values_and_odd_shapes_are_missing(when: dict[str, Any]) -> None:
    profile = copy.deepcopy(LOOKER)
    profile.counts["purchase"] = None  # type: ignore[assignment]
    profile.category_affinity = {}
    assert not holds(when, profile)
    profile.counts["purchase"] = {"nested": 1}  # type: ignore[assignment]
    assert holds(when, profile) is (when.get("op") == "!=" or "exists" in when)


def test_top_category_ties_count_for_every_tied_category() -> None:
    profile = copy.deepcopy(LOOKER)
    profile.category_affinity = {"a": 2.0, "b": 2.0, "c": 1.0}
    assert holds({"top_category": "a"}, profile) and holds({"top_category": "b"}, profile)
    assert not holds({"top_category": "c"}, profile)


def test_now_before_the_newest_event_reads_as_the_newest_event() -> None:
    when = {"since": "last_purchase_ms", "op": "<", "value": "1h"}
    assert holds(when, BUYER, now=T0 - 3 * DAY_MS) is holds(when, BUYER, now=T0)  # both false
    assert not holds({"since": "first_seen_ms", "op": "<", "value": "1d"}, BUYER, now=0)


# --- windows as of a later time ----------------------------------------------------------------


def random_window_state(seed: int) -> tuple[Any, list[Event]]:
    rng = random.Random(seed)
    state = initialize(SPECS)
    events = []
    t = T0
    for i in range(rng.randrange(1, 60)):
        t += rng.choice([0, 1, 7 * MINUTE_MS, HOUR_MS, 5 * HOUR_MS, DAY_MS // 3])
        kind = rng.choice(["view", "add_to_cart", "purchase"])
        price = round(rng.uniform(1, 99), 2) if kind == "purchase" else None
        event = Event(f"e{i}", "u", t, kind, item_id=f"i{i}", price=price)
        add(state, SPECS, event, 0)
        events.append(event)
    return state, events


@pytest.mark.parametrize("seed", range(20))
def test_counts_as_of_later_times_equal_the_windows_after_a_neutral_event(seed: int) -> None:
    """As of ``t``, a window holds what ``result`` would report after an event at ``t``
    that counts for nothing we read (a login): the same hopping-window semantics."""
    state, _ = random_window_state(seed)
    rng = random.Random(seed)
    offsets = [
        0,
        1,
        4 * MINUTE_MS,
        59 * MINUTE_MS,
        HOUR_MS,
        23 * HOUR_MS,
        DAY_MS,
        3 * DAY_MS,
        8 * DAY_MS,
    ]
    for as_of in [state.latest_ms + o for o in offsets] + [
        state.latest_ms - rng.randrange(HOUR_MS)
    ]:
        later = copy.deepcopy(state)
        add(later, SPECS, Event("tick", "u", max(as_of, state.latest_ms), "login"), 0)
        expected = result(later, SPECS)
        for i, spec in enumerate(SPECS):
            for kind in ("view", "add_to_cart", "purchase"):
                want = expected[spec.name]["counts"].get(kind, 0)
                assert count_as_of(state, SPECS, i, kind, as_of) == want, (spec.name, kind)
            assert spend_as_of(state, SPECS, i, as_of) == pytest.approx(
                expected[spec.name]["spend"], abs=1e-9
            )
        if as_of <= state.latest_ms:  # at event time, exactly what the profile publishes
            now = result(state, SPECS)
            assert [count_as_of(state, SPECS, i, "view", as_of) for i in range(3)] == [
                now[s.name]["counts"].get("view", 0) for s in SPECS
            ]


Predicate = Callable[[Any], bool]


@pytest.mark.parametrize("seed", range(20))
def test_the_next_flip_is_exactly_when_a_condition_on_a_window_changes(seed: int) -> None:
    state, _ = random_window_state(seed)
    far = state.latest_ms + 400 * DAY_MS  # every bucket has left by then
    predicates: list[Predicate] = [
        *(partial(operator.le, k) for k in (0.5, 1, 2, 3, 40.0, 500.0)),  # k <= x
        *(partial(operator.gt, k) for k in (1, 2, 150.0)),  # x < k
        lambda x: 1 <= x <= 2,
    ]
    for i, spec in enumerate(SPECS):
        leaving = sorted({(b.index + spec.buckets) * spec.step_ms for b in state.rings[i]})
        for holds in predicates:
            for counted in (True, False):

                def value(t: int, i: int = i, counted: bool = counted) -> float:
                    if counted:
                        return count_as_of(state, SPECS, i, "add_to_cart", t)
                    return spend_as_of(state, SPECS, i, t)

                def flip(
                    now: int, i: int = i, counted: bool = counted, holds: Predicate = holds
                ) -> int | None:
                    if counted:
                        return next_count_flip_ms(state, SPECS, i, "add_to_cart", now, holds)
                    return next_spend_flip_ms(state, SPECS, i, now, holds)

                now = state.latest_ms
                while True:
                    t, before = flip(now), holds(value(now))
                    # Nothing changes between now and t (values move only as buckets leave).
                    end = far if t is None else t
                    for moment in [m for m in leaving if now < m < end] + [end - 1]:
                        assert holds(value(moment)) == before
                    if t is None:
                        assert holds(value(far)) == before
                        break
                    assert t > now and holds(value(t)) != before
                    now = t


def test_a_quiet_users_cart_leaves_the_day_as_time_passes() -> None:
    state = initialize(SPECS)
    add(state, SPECS, Event("c", "u", T0 + 10 * MINUTE_MS, "add_to_cart", item_id="i"), 0)
    day = span_index(SPECS, "24h")
    assert [
        count_as_of(state, SPECS, day, "add_to_cart", T0 + h * HOUR_MS) for h in (0, 23, 24)
    ] == [
        1,
        1,
        0,
    ]
    with pytest.raises(ValueError, match="no window span '2h'"):
        span_index(SPECS, "2h")
    assert count_as_of(initialize(SPECS), SPECS, 0, "view", T0) == 0
    assert spend_as_of(initialize(SPECS), SPECS, 0, T0) == 0.0
    assert next_count_flip_ms(initialize(SPECS), SPECS, 0, "view", T0, bool) is None


# --- next_check_ms -----------------------------------------------------------------------------

CART_AT = T0 + 10 * MINUTE_MS
CARTER = fold((CART_AT, "add_to_cart", {"item_id": "i1", "category": "Knits"}), user="u3")
BOUGHT_AT = T0 + 3 * HOUR_MS
SPENDER = fold(
    (BOUGHT_AT, "purchase", {"item_id": "i1", "category": "Knits", "price": 150.0}),
    (BOUGHT_AT + MINUTE_MS, "purchase", {"item_id": "i2", "category": "Knits", "price": 400.0}),
    user="u4",
)  # R 5 F 3 M 5 -> FM 4: champions, until the recency days pass the first cut (2)
LAST_BUY = BOUGHT_AT + MINUTE_MS


@pytest.mark.parametrize(
    ("profile", "when", "now", "flip_at"),
    [
        (SPENDER, {"since": "last_purchase_ms", "op": ">=", "value": "30d"}, LAST_BUY,
         LAST_BUY + 30 * DAY_MS),
        (SPENDER, {"since": "last_purchase_ms", "op": ">", "value": "30d"}, LAST_BUY + DAY_MS,
         LAST_BUY + 30 * DAY_MS + 1),
        (SPENDER, {"not": {"since": "last_purchase_ms", "op": ">=", "value": "30d"}}, LAST_BUY,
         LAST_BUY + 30 * DAY_MS),
        (SPENDER, {"since": "first_seen_ms", "op": "<", "value": "7d"}, LAST_BUY,
         BOUGHT_AT + 7 * DAY_MS),
        (SPENDER, {"since": "first_seen_ms", "op": "<=", "value": "7d"}, LAST_BUY,
         BOUGHT_AT + 7 * DAY_MS + 1),
        (SPENDER, {"since": "first_seen_ms", "op": "between", "value": ["1d", "2d"]}, LAST_BUY,
         BOUGHT_AT + DAY_MS),
        (SPENDER, {"since": "first_seen_ms", "op": "between", "value": ["1d", "2d"]},
         BOUGHT_AT + DAY_MS, BOUGHT_AT + 2 * DAY_MS + 1),
        (CARTER, {"count": "add_to_cart", "window": "24h", "op": ">", "value": 0}, CART_AT,
         T0 + DAY_MS),  # its hour bucket [T0, T0 + 1h) leaves the day
        (CARTER, {"count": "add_to_cart", "window": "1h", "op": "==", "value": 0}, CART_AT,
         CART_AT + HOUR_MS),  # its 5-minute bucket leaves the hour
        (SPENDER, {"window_spend": "7d", "op": ">=", "value": 100}, LAST_BUY,
         T0 + 7 * DAY_MS),  # its 6-hour bucket [T0, T0 + 6h) leaves the week
        (SPENDER, {"rfm_group": "champions"}, LAST_BUY, LAST_BUY + 3 * DAY_MS),
        (SPENDER, {"all": [{"rfm_group": "loyal"}, {"since": "last_purchase_ms", "op": "<",
                                                    "value": "30d"}]},
         LAST_BUY + 3 * DAY_MS, LAST_BUY + 8 * DAY_MS),  # FM 4: loyal at R 4 and 3, not R 2
    ],
)  # fmt: skip
def test_next_check_is_when_membership_flips(
    profile: UserProfile, when: dict[str, Any], now: int, flip_at: int
) -> None:
    book = book_of(when, rfm=CUTS)
    inside = "s" in evaluate(book, profile, SPECS, now)
    t = next_check_ms(book, profile, SPECS, now)
    assert t is not None and now < t <= flip_at
    while t < flip_at:  # conservative: an earlier check changes nothing, ask again
        assert ("s" in evaluate(book, profile, SPECS, t)) is inside
        t = next_check_ms(book, profile, SPECS, t)
        assert t is not None
    assert t == flip_at
    assert ("s" in evaluate(book, profile, SPECS, flip_at - 1)) is inside
    assert ("s" in evaluate(book, profile, SPECS, flip_at)) is not inside


def test_a_combination_waits_for_the_parts_that_keep_it_as_it_is() -> None:
    """A cart abandoner who bought: the cart leaving the hour changes nothing while the
    purchase is in the day, so the next check is when the purchase leaves it."""
    bought = T0 + 20 * MINUTE_MS
    buyer = fold(
        (CART_AT, "add_to_cart", {"item_id": "i1", "category": "Knits"}),
        (bought, "purchase", {"item_id": "i1", "category": "Knits", "price": 10.0}),
        user="u9",
    )
    abandoned = {"all": [
        {"count": "add_to_cart", "window": "24h", "op": ">", "value": 0},
        {"count": "purchase", "window": "24h", "op": "==", "value": 0},
        {"count": "add_to_cart", "window": "1h", "op": "==", "value": 0},
    ]}  # fmt: skip
    book = book_of(abandoned)
    assert evaluate(book, buyer, SPECS, bought) == set()
    # The purchase's hour bucket leaves the day at T0 + 24h, with the cart's: the first
    # time the purchases part could hold again (the cart leaves the hour at T0 + 1h 10m).
    assert next_check_ms(book, buyer, SPECS, bought) == T0 + DAY_MS
    # Parts that can never change keep a failing "all" as it is for good.
    assert next_check_ms(book_of({"all": [abandoned, {"field": "spend", "op": ">", "value": 99}]}),
                         buyer, SPECS, bought) is None  # fmt: skip
    # An "any" that holds changes only once every part holding it has changed.
    carted = {"count": "add_to_cart", "window": "1h", "op": ">", "value": 0}
    either = book_of(
        {"any": [carted, {"count": "purchase", "window": "24h", "op": ">", "value": 0}]}
    )
    assert next_check_ms(either, buyer, SPECS, bought) == T0 + DAY_MS


def test_next_check_is_none_when_only_events_change_things() -> None:
    assert (
        next_check_ms(book_of({"field": "spend", "op": ">", "value": 1}), BUYER, SPECS, T0) is None
    )
    never = book_of({"since": "last_purchase_ms", "op": ">=", "value": "30d"})
    assert next_check_ms(never, LOOKER, SPECS, T0) is None  # no purchase, no RFM to age
    assert next_check_ms(never, BUYER, SPECS, T0) == BUYER.last_purchase_ms + 30 * DAY_MS
    # RFM ages on its own; after the last recency cut (10 days) it is done.
    rfm_only = book_of({"exists": "counts.view"}, rfm=CUTS)
    assert next_check_ms(rfm_only, BUYER, SPECS, T0) == BUYER.last_purchase_ms + 5 * DAY_MS
    assert next_check_ms(rfm_only, BUYER, SPECS, BUYER.last_purchase_ms + 11 * DAY_MS) is None


@pytest.mark.parametrize("seed", range(3))
def test_nothing_changes_between_checks_on_generated_users(seed: int) -> None:
    """Never late: at random times before each check, memberships and RFM equal those at the
    previous check, for the default book on generated users, for sixty days of silence."""
    book = load_segment_book(windows=SPECS)
    states: dict[str, Any] = {}
    for generated in generate_events(3_000, 150, seed=seed, malformed_rate=0.0):
        event = parse_event(generated.line)
        assert isinstance(event, Event)
        state, _ = apply_event(states.get(event.user_id), event, None, PARAMS, dim=4)
        if state is None:
            states.pop(event.user_id, None)
        else:
            states[event.user_id] = state
    rng = random.Random(seed)
    checks = 0
    for state in states.values():
        profile = state.profile
        now = profile.last_seen_ms
        horizon = now + 60 * DAY_MS
        while True:
            inside = evaluate(book, profile, SPECS, now)
            t = next_check_ms(book, profile, SPECS, now)
            end = horizon if t is None else min(t, horizon)
            for probe in [end - 1, *(rng.randrange(now, end) for _ in range(3))]:
                assert evaluate(book, profile, SPECS, probe) == inside
            if t is None or t >= horizon:
                break
            now, checks = t, checks + 1
    assert checks > len(states)  # time-dependent segments were exercised


# --- RFM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "purchases", "money", "score"),
    [
        (0, 1, 0.0, "511"),
        (2, 1, 50.0, "511"),  # on a cut: the band below it (fewer days is a higher R)
        (3, 1, 50.0, "411"),
        (10, 2, 50.004, "231"),  # F: 2 exceeds the cuts 1, 1; money rounds to 50.00
        (11, 4, 50.005, "142"),  # 50.005 is 50.0050000000000026 in binary: rounds up
        (11, 5, 50.006, "152"),
        (4, 3, 499.999, "444"),  # rounds to 500.00, on the cut
        (5, 3, 500.01, "345"),
    ],
)
def test_rfm_scores_at_cut_boundaries(days: int, purchases: int, money: float, score: str) -> None:
    assert rfm_score(days, purchases, money, RFM) == score


@pytest.mark.parametrize(
    ("score", "group"),
    [
        ("555", "champions"), ("544", "champions"), ("534", "champions"),  # FM = ceil(3.5) = 4
        ("533", "potential_loyalist"), ("512", "potential_loyalist"), ("511", "new_customers"),
        ("411", "promising"), ("455", "loyal"), ("345", "loyal"), ("333", "need_attention"),
        ("322", "about_to_sleep"), ("311", "about_to_sleep"), ("255", "cannot_lose_them"),
        ("155", "cannot_lose_them"), ("244", "at_risk"), ("133", "at_risk"),
        ("222", "hibernating"), ("211", "hibernating"), ("121", "hibernating"), ("111", "lost"),
        ("", None), ("611", None),
    ],
)  # fmt: skip
def test_rfm_groups_follow_the_grid(score: str, group: str | None) -> None:
    assert rfm_group(score) == group


def test_every_score_has_a_group_and_every_group_a_score() -> None:
    scores = [f"{r}{f}{m}" for r in "12345" for f in "12345" for m in "12345"]
    assert {rfm_group(s) for s in scores} == set(RFM_GROUPS)


def test_rfm_of_a_profile_and_its_membership() -> None:
    assert profile_rfm(LOOKER, RFM, T0) == ""
    assert profile_rfm(BUYER, RFM, T0) == "433"
    profile = copy.deepcopy(BUYER)
    moves = update_memberships(profile, book_of({"exists": "counts.x"}, rfm=CUTS), SPECS, T0, None)
    assert profile.rfm == "433" and profile.segments == {"rfm:potential_loyalist": T0}
    assert [(m.segment, m.direction) for m in moves] == [("rfm:potential_loyalist", "enter")]
    moves = update_memberships(profile, book_of({"exists": "counts.x"}, rfm=CUTS), SPECS,
                               T0 + 5 * DAY_MS, None)  # fmt: skip
    assert profile.rfm == "233"
    assert [(m.segment, m.direction) for m in moves] == [
        ("rfm:potential_loyalist", "exit"),
        ("rfm:at_risk", "enter"),
    ]
    looker = copy.deepcopy(LOOKER)
    assert (
        update_memberships(looker, book_of({"exists": "counts.x"}, rfm=CUTS), SPECS, T0, None) == []
    )
    assert looker.rfm == "" and looker.segments == {}


def test_rfm_cut_points_are_quintiles() -> None:
    cuts = rfm_cut_points(range(100), [1] * 70 + [2] * 20 + [9] * 10, [i / 3 for i in range(100)])
    assert cuts.recency_days == (19.8, 39.6, 59.4, 79.2)
    assert cuts.frequency == (1.0, 1.0, 1.0, 2.0)
    assert cuts.monetary == (6.6, 13.2, 19.8, 26.4)
    with pytest.raises(ValueError, match="nobody has bought"):
        rfm_cut_points([], [], [])


@pytest.mark.parametrize(
    "cuts", [((1, 2, 3),), ((3, 2, 1, 0),), ((-1, 0, 1, 2),), ((0, 1, 2, float("nan")),)]
)
def test_rfm_cuts_are_checked(cuts: tuple[tuple[float, ...]]) -> None:
    with pytest.raises(ValueError, match="rfm recency_days: need 4 ascending"):
        RfmCuts(cuts[0], (1, 1, 1, 1), (1, 2, 3, 4))


# --- transitions -------------------------------------------------------------------------------

SCRIPT: list[tuple[int, str, dict[str, Any]]] = [
    (T0, "view", {"item_id": "i1", "category": "Dresses"}),
    (T0 + MINUTE_MS, "add_to_cart", {"item_id": "i1", "category": "Dresses"}),
    (T0 + 3 * HOUR_MS, "view", {"item_id": "i2", "category": "Headphones"}),
    (T0 + 3 * HOUR_MS + MINUTE_MS, "purchase", {"item_id": "i2", "category": "Headphones",
                                          "price": 1200.0}),
    (T0 + 40 * DAY_MS, "view", {"item_id": "i3", "category": "Skincare"}),
]  # fmt: skip


def run_script(book: SegmentBook, user: str = "u9") -> tuple[UserProfile, list[SegmentTransition]]:
    """The flow, by hand: memberships after each event, timers at each next check between."""
    state = None
    moves: list[SegmentTransition] = []
    clock = 0  # the stream's event-time clock
    for n, (ts, kind, fields) in enumerate(SCRIPT):
        while state is not None:  # timers due before this event
            t = next_check_ms(book, state.profile, SPECS, clock)
            if t is None or t >= ts:
                break
            moves += update_memberships(state.profile, book, SPECS, t, None)
            clock = t
        event = Event(f"{user}-e{n}", user, ts, kind, **fields)
        state, _ = apply_event(state, event, None, PARAMS, dim=4)
        assert state is not None
        moves += update_memberships(state.profile, book, SPECS, ts, event.event_id)
        clock = ts
    assert state is not None
    return state.profile, moves


def test_the_default_book_walks_a_user_through_segments() -> None:
    book = load_segment_book()
    profile, moves = run_script(book)
    story = [(m.event_time_ms - T0, m.segment, m.direction, m.event_id) for m in moves]
    bought = 3 * HOUR_MS + MINUTE_MS
    assert story == [
        (0, "new_users", "enter", "u9-e0"),
        (0, "fashion_lovers", "enter", "u9-e0"),
        (HOUR_MS, "cart_abandoners", "enter", None),  # the cart left the last hour (a timer)
        (bought, "cart_abandoners", "exit", "u9-e3"),
        (bought, "high_value", "enter", "u9-e3"),
        (bought, "big_spenders_this_week", "enter", "u9-e3"),
        (bought, "fashion_lovers", "exit", "u9-e3"),
        (bought, "electronics_lovers", "enter", "u9-e3"),
        (bought, "rfm:potential_loyalist", "enter", "u9-e3"),  # R 5, F 1, M 5: FM 3
        (bought + 5 * DAY_MS, "rfm:potential_loyalist", "exit", None),  # 5 days > 4: R 3
        (bought + 5 * DAY_MS, "rfm:need_attention", "enter", None),
        (7 * DAY_MS, "new_users", "exit", None),
        (7 * DAY_MS, "big_spenders_this_week", "exit", None),  # bucket [T0, T0 + 6h) left
        (bought + 8 * DAY_MS, "rfm:need_attention", "exit", None),  # 8 days > 7: R 2
        (bought + 8 * DAY_MS, "rfm:at_risk", "enter", None),
        (bought + 30 * DAY_MS, "lapsing", "enter", None),
    ]  # the view on day 40 changes nothing: R 1 with FM 3 is still at_risk
    assert memberships_from_transitions(moves) == {"u9": set(profile.segments)}
    assert all(m.definitions_version == book.version for m in moves)


def test_catch_up_runs_the_due_checks_in_order() -> None:
    book = load_segment_book()
    profile = fold(*SCRIPT[:4], user="u9")  # up to the purchase
    now = profile.last_seen_ms
    update_memberships(profile, book, SPECS, now, "u9-e3")
    one_by_one = copy.deepcopy(profile)
    expected: list[SegmentTransition] = []
    until = now + 40 * DAY_MS
    t = next_check_ms(book, one_by_one, SPECS, now)
    due = t or 0
    while t is not None and t <= until:
        expected += update_memberships(one_by_one, book, SPECS, t, None)
        t = next_check_ms(book, one_by_one, SPECS, t)
    version = profile.version
    caught, next_due = catch_up(profile, book, SPECS, due, until)
    what = [(m.segment, m.direction, m.event_time_ms) for m in caught]
    assert what == [(m.segment, m.direction, m.event_time_ms) for m in expected]
    assert next_due == 0
    # Each check that changed something is a version of its own, named by its transitions.
    changed_at = sorted({m.event_time_ms for m in caught})
    versions = {m.event_time_ms: m.profile_version for m in caught}
    assert all(versions[m.event_time_ms] == m.profile_version for m in caught)
    assert [versions[t] for t in changed_at] == sorted(set(versions.values()))  # rising
    assert min(versions.values()) > version and profile.version >= max(versions.values())
    assert (profile.segments, profile.rfm) == (one_by_one.segments, one_by_one.rfm)
    assert [m.segment for m in caught][-1] == "lapsing"  # the last thing time does
    assert catch_up(profile, book, SPECS, 0, until) == ([], 0)
    early, later = catch_up(copy.deepcopy(fold(*SCRIPT[:4], user="u9")), book, SPECS, due, due)
    assert later > due and all(m.event_time_ms == due for m in early)


def test_transition_ids_are_deterministic_and_unique() -> None:
    book = load_segment_book()
    _, first = run_script(book)
    _, again = run_script(book)
    assert first == again  # a replay re-sends the very same transitions, ids included
    assert len({m.transition_id for m in first}) == len(first)
    _, other = run_script(book, user="u10")
    assert not {m.transition_id for m in first} & {m.transition_id for m in other}


def test_replayed_and_duplicated_transitions_rebuild_the_memberships() -> None:
    book = load_segment_book()
    profile, moves = run_script(book)
    resent = moves + moves[: len(moves) // 2] + moves[-3:]  # a restart re-sends some
    assert memberships_from_transitions(resent) == {"u9": set(profile.segments)}
    assert memberships_from_transitions([]) == {}


def test_dropped_definitions_are_exited_and_exit_all_empties() -> None:
    profile, _ = run_script(load_segment_book())
    before = set(profile.segments)
    assert "high_value" in before
    smaller = book_of({"field": "spend", "op": ">=", "value": 1000})
    now = profile.last_seen_ms
    moves = update_memberships(profile, smaller, SPECS, now, "e-new")
    assert {(m.segment, m.direction) for m in moves} == {("s", "enter")} | {
        (name, "exit") for name in before
    }
    assert all(m.definitions_version == smaller.version and m.event_id == "e-new" for m in moves)
    assert profile.segments == {"s": now} and profile.rfm == ""
    gone = exit_all(profile, smaller, now + 5, "delete")
    assert [(m.segment, m.direction, m.event_time_ms) for m in gone] == [("s", "exit", now + 5)]
    assert profile.segments == {}


# --- the file format ---------------------------------------------------------------------------


def test_the_bundled_book() -> None:
    book = load_segment_book(windows=SPECS)
    assert len(book.version) == 12 and book.rfm is not None
    assert {"cart_abandoners", "new_users", "high_value", "lapsing"} <= book.names
    assert all(s.description for s in book.segments)
    assert load_segment_book().version == book.version  # the hash of the bytes
    with pytest.raises(ValueError, match="segment 'cart_abandoners': no window span '1h'"):
        load_segment_book(windows=parse_windows("24h:1h,7d:6h"))


def test_a_window_missing_at_evaluation_names_the_segment() -> None:
    book = book_of({"count": "view", "window": "2h", "op": ">", "value": 0})
    with pytest.raises(ValueError, match="segment 's': no window span '2h'"):
        evaluate(book, BUYER, SPECS, T0)


@pytest.mark.parametrize(
    ("when", "error"),
    [
        ({"field": "spend", "op": ">", "value": 1, "extra": 1},
         r"when: unknown key\(s\) \['extra'\] in a 'field'"),
        ({"field": "spend", "exists": "spend"}, "when: a condition has exactly one of"),
        ({}, "when: a condition has exactly one of"),
        ([], "when: a condition is a JSON object"),
        ({"all": []}, "when.all: needs a non-empty list"),
        ({"all": [{"exists": "spend"}, {"nope": 1}]}, r"when.all\[1\]: a condition has exactly"),
        ({"not": {"field": "spend", "op": "=>", "value": 1}}, "when.not.field.op: unknown op '=>'"),
        ({"field": "spend", "op": ">"}, r"needs \['value'\]"),
        ({"field": "spend", "op": ">", "value": "1"}, "when.field.value: '>' needs a number"),
        ({"field": "spend", "op": ">", "value": None}, "when.field.value: needs a number or a"),
        ({"field": "spend", "op": "==", "value": [1]}, "when.field.value: needs a number or a"),
        ({"field": "spend", "op": "==", "value": False}, "when.field.value: needs a number or a"),
        ({"field": "spend", "op": "in", "value": [1, True]}, "when.field.value: needs a number"),
        ({"field": "spend", "op": "between", "value": [5, 1]}, "low <= high"),
        ({"field": "spend", "op": "between", "value": [1]}, r"'between' needs \[low, high\]"),
        ({"field": "spend", "op": "in", "value": []}, "'in' needs a non-empty list"),
        ({"field": "spends", "op": ">", "value": 1}, "when.field: unknown field 'spends'"),
        ({"field": "counts", "op": ">", "value": 1}, "'counts' is a map: name one key"),
        ({"field": "spend.x", "op": ">", "value": 1}, "'spend' is a number or a string"),
        ({"field": "windows.24h", "op": ">", "value": 1}, "with 'count' or 'window_spend'"),
        ({"field": "rfm", "op": "==", "value": "555"}, "with an 'rfm_group' condition"),
        ({"field": "", "op": ">", "value": 1}, "a field path is a dotted string"),
        ({"exists": 3}, "a field path is a dotted string"),
        ({"count": "cart", "window": "24h", "op": ">", "value": 0}, "unknown event type 'cart'"),
        ({"count": "view", "window": "day", "op": ">", "value": 0},
         "when.count.window: not a positive"),
        ({"count": "view", "op": ">", "value": 0}, r"needs \['window'\]"),
        ({"count": "view", "window": "24h", "op": ">", "value": "0"}, "needs a number"),
        ({"window_spend": 24, "op": ">", "value": 0}, "a window is a span name"),
        ({"since": "spend", "op": ">", "value": "1d"}, "'since' takes a timestamp field"),
        ({"since": "last_seen_ms", "op": ">", "value": "1 day"}, "not a positive duration"),
        ({"since": "last_seen_ms", "op": ">", "value": -5}, "a duration is like"),
        ({"top_category": []}, "when.top_category: needs a category name"),
        ({"rfm_group": "vip"}, r"unknown RFM group\(s\) \['vip'\]"),
    ],
)  # fmt: skip
def test_parse_errors_name_the_segment_and_the_place(when: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error) as info:
        book_of(when, rfm=CUTS)
    assert str(info.value).startswith("segment 's': when")


SPEND = {"exists": "spend"}
ONE_TO_FOUR = [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"segment": {}}, r"unknown top-level key\(s\) \['segment'\]"),
        ({"segments": []}, "maps a segment name"),
        ({"segments": {"Big Spenders": {"when": SPEND}}}, "segment 'Big Spenders': a name"),
        ({"segments": {"rfm:x": {"when": SPEND}}}, "segment 'rfm:x': a name"),
        ({"segments": {"a": {"when": SPEND, "owner": "me"}}},
         r"segment 'a': unknown key\(s\) \['owner'\]"),
        ({"segments": {"a": {"description": "x"}}}, "segment 'a': needs a 'when'"),
        ({"segments": {"a": {"description": 1, "when": SPEND}}}, "description: needs a string"),
        ({"segments": {"a": {"when": {"rfm_group": "lost"}}}}, "no 'rfm' cut points"),
        ({"rfm": {"recency_days": ONE_TO_FOUR, "frequency": ONE_TO_FOUR}},
         "rfm monetary: need 4"),
        ({"rfm": {**CUTS, "by": "me"}}, r"rfm: unknown key\(s\) \['by'\]"),
        ({"rfm": {**CUTS, "recency_days": [4, 3, 2, 1]}}, "rfm recency_days: need 4 ascending"),
        ({"rfm": {**CUTS, "frequency": [1, 2, 3]}}, "rfm frequency: need 4 ascending"),
        ({"rfm": []}, "rfm: an object"),
        ("{", "not valid JSON"),
        ([], "the top level is a JSON object"),
    ],
)  # fmt: skip
def test_file_errors(raw: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_segment_book(raw if isinstance(raw, str) else json.dumps(raw))


def test_the_version_is_a_hash_of_the_bytes() -> None:
    a = parse_segment_book('{"segments": {}}')
    b = parse_segment_book('{"segments": {} }')
    assert a.version != b.version and a.segments == b.segments == ()
    assert parse_segment_book(b'{"segments": {}}').version == a.version


# --- batch RFM and the commands ----------------------------------------------------------------


def test_streaming_and_batch_rfm_agree_on_ties_at_cut_points() -> None:
    """0.1 + 0.2 is 0.30000000000000004: on the 0.3 cut only after rounding to cents."""
    day = DAY_MS * 10_000
    log = [
        Purchase("1", day, 1, 0.1), Purchase("1", day + DAY_MS, 1, 0.2),
        Purchase("2", day, 3, 1.0), Purchase("3", day + 2 * DAY_MS, 0, 0.7),
        Purchase("4", day, 7, 0.3),
    ]  # fmt: skip
    cuts = RfmCuts((0, 1, 2, 3), (1, 1, 1, 2), (0.1, 0.3, 0.5, 0.7))
    as_of = day + 2 * DAY_MS
    batch = segments_eval.batch_rfm(log, cuts, as_of)
    assert batch == {"cdnow-1": "442", "cdnow-2": "315", "cdnow-3": "514", "cdnow-4": "312"}
    book = parse_segment_book(json.dumps({"rfm": {"recency_days": [0, 1, 2, 3],
        "frequency": [1, 1, 1, 2], "monetary": [0.1, 0.3, 0.5, 0.7]}}))  # fmt: skip
    result = segments_eval.fold_events(segments_eval.cdnow_replay(log), book, PARAMS)
    segments_eval.timers_at(result, book, PARAMS, as_of)
    streaming = {u: s.profile.rfm for u, s in result.states.items()}
    assert streaming == batch
    printed: list[str] = []
    table = segments_eval.check_streaming_rfm(
        streaming, cuts=cuts, purchases=log, as_of_ms=as_of, out=printed.append
    )
    assert table.share_equal == 1.0 and table.users == 4 and printed[0].startswith("users 4")
    assert segments_eval.compare_rfm({**streaming, "cdnow-1": "111"}, batch) == 0.75


def test_cdnow_streaming_rfm_matches_the_batch_recomputation() -> None:
    check = segments_eval.cdnow_offline_check(out=None)
    assert check.comparison.users == 23_570
    assert check.comparison.share_equal >= segments_eval.TARGET_SHARE
    assert check.memberships_match


def run_command(*argv: str) -> str:
    done = profilestream(*argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_rfm_cuts_from_a_delta_file(tmp_path: Path) -> None:
    deltas = tmp_path / "deltas.jsonl"
    vector = encode_vector(np.zeros(2))
    lines = []
    for i in range(10):
        fields = {
            "last_seen_ms": T0 + i * DAY_MS,
            "last_purchase_ms": T0 + i * DAY_MS if i else 0,
            "counts": {"purchase": i} if i else {"view": 1},
            "spend": 10.0 * i,
        }
        delta = ProfileDelta(f"u{i}", 1, "full", "e", T0, ["e"], "m", changed=fields,
                             interest=vector)  # fmt: skip
        lines.append(delta_to_json(delta))
    deltas.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "segments.json"
    run_command("rfm-cuts", "--deltas", str(deltas), "--out", str(out))
    book = load_segment_book(out)
    assert book.rfm == rfm_cut_points(
        range(8, -1, -1), range(1, 10), [10.0 * i for i in range(1, 10)]
    )
    assert book.names == load_segment_book().names
    written = json.loads(out.read_text())
    assert written["rfm"]["customers"] == 9 and written["rfm"]["as_of_ms"] == T0 + 9 * DAY_MS


def test_rfm_cuts_from_an_event_log(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(g.line for g in generate_events(2_000, 100, seed=3)) + b"\n")
    out = tmp_path / "segments.json"
    run_command("rfm-cuts", "--events", str(events), "--out", str(out), "--as-of-ms", str(T0))
    book = load_segment_book(out)
    assert book.rfm is not None and json.loads(out.read_text())["rfm"]["as_of_ms"] == T0
