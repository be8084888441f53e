"""The per-user profile step: SGD on the interest vector, decay, bounds, dedupe, late events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from operators.ingest import Event
from operators.ingest.units import DAY_MS
from operators.profile import (
    Outcome,
    ProfileParams,
    UserState,
    apply_event,
    decay,
    decode_state,
    encode_state,
    parse_windows,
    public_fields,
    sgd_step,
)
from operators.text import TextSignals

T0 = 1_714_564_800_000
PARAMS = ProfileParams()


def event(i: int, kind: str = "view", ts: int | None = None, **fields: Any) -> Event:
    defaults: dict[str, Any] = {"item_id": f"i{i}", "category": "shoes", "brand": "acme"}
    return Event(
        f"e{i}", "u1", T0 + i * 60_000 if ts is None else ts, kind, **{**defaults, **fields}
    )


def run(
    events: Sequence[tuple[Event, np.ndarray | None]], params: ProfileParams = PARAMS
) -> tuple[UserState | None, list[Outcome]]:
    state: UserState | None = None
    outcomes = []
    for ev, vector in events:
        state, outcome = apply_event(state, ev, vector, params, dim=4)
        outcomes.append(outcome)
    return state, outcomes


def now_value(weight: float, state: UserState, half_life_ms: int) -> float:
    """A stored weight valued at the user's newest event time."""
    profile = state.profile
    return weight * decay(profile.last_seen_ms - profile.anchor_ms, half_life_ms)


def unit(rng: np.random.Generator, dim: int = 6) -> np.ndarray:
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_sgd_step_matches_the_weighted_mean_it_minimises() -> None:
    rng = np.random.default_rng(1)
    targets = np.array([unit(rng) for _ in range(50)])
    weights = rng.uniform(0.5, 4, 50)
    vector, total = np.zeros(6, np.float32), 0.0
    for target, weight in zip(targets, weights, strict=True):
        vector, total = sgd_step(vector, total, target, float(weight))
    expected = (weights[:, None] * targets).sum(0) / weights.sum()
    assert np.allclose(vector, expected, atol=2e-3)  # float16 keeps 11 significant bits
    assert vector.dtype == np.float16


def test_loss_falls_on_a_stream_of_one_interest() -> None:
    rng = np.random.default_rng(2)
    interest = np.array([0.6, 0.8, 0, 0], np.float32)
    events = [
        (event(i), (interest + 0.1 * rng.standard_normal(4)).astype(np.float32)) for i in range(40)
    ]
    state, _ = run(events)
    losses = []
    vector, total = np.zeros(4, np.float32), 0.0
    for _, x in events:
        losses.append(float(np.sum((vector - interest) ** 2)))
        vector, total = sgd_step(vector, total, x, 1.0)
    assert losses[-1] < losses[1] / 10
    assert state is not None
    assert np.linalg.norm(state.profile.interest - interest) < 0.1


def test_recent_interest_outweighs_an_old_one() -> None:
    old, new = np.array([1, 0, 0, 0], np.float32), np.array([0, 1, 0, 0], np.float32)
    events = [(event(i, ts=T0 + i), old) for i in range(20)]
    events += [(event(100 + i, ts=T0 + 60 * DAY_MS + i), new) for i in range(3)]
    state, _ = run(events)
    assert state is not None
    assert state.profile.interest[1] > state.profile.interest[0]


def test_counts_spend_and_affinities() -> None:
    events = [
        (event(1, "purchase", price=10.0, quantity=2), None),
        (event(2, "refund", price=10.0), None),
        (event(3, "view", category="bags", brand="zed"), None),
        (event(4, "login", item_id=None, category=None, brand=None), None),
    ]
    state, outcomes = run(events)
    assert state is not None
    profile = state.profile
    assert outcomes == [Outcome.APPLIED] * 4
    assert profile.version == 4
    assert profile.counts == {"purchase": 1, "refund": 1, "view": 1, "login": 1}
    assert (profile.spend, profile.refunded) == (20.0, 10.0)
    assert profile.category_affinity["shoes"] > profile.category_affinity["bags"] > 0
    windows = public_fields(profile, PARAMS)["windows"]
    assert windows["1h"]["counts"] == profile.counts
    assert windows["24h"]["spend"] == 20.0 and windows["24h"]["refunded"] == 10.0


def test_a_late_event_is_discounted_and_left_out_of_the_windows() -> None:
    state, outcomes = run(
        [(event(1, ts=T0 + 30 * DAY_MS), None), (event(2, ts=T0, category="bags"), None)]
    )
    assert state is not None
    assert outcomes == [Outcome.APPLIED, Outcome.LATE]
    profile = state.profile
    assert profile.last_seen_ms == T0 + 30 * DAY_MS
    assert profile.first_seen_ms == T0
    assert profile.counts == {"view": 2}  # the long-term profile has it
    assert profile.category_affinity["bags"] == pytest.approx(0.25)  # half-life 30 days
    assert public_fields(profile, PARAMS)["windows"]["7d"]["counts"] == {"view": 1}


def test_lateness_is_configurable() -> None:
    params = ProfileParams(allowed_lateness_ms=2 * DAY_MS, windows=parse_windows("7d:1d"))
    state, outcomes = run([(event(1, ts=T0 + DAY_MS), None), (event(2, ts=T0), None)], params)
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert state is not None
    assert public_fields(state.profile, params)["windows"]["7d"]["counts"] == {"view": 2}


def test_weights_are_anchored_and_the_anchor_moves_after_a_half_life() -> None:
    params = ProfileParams(affinity_half_life_ms=10 * DAY_MS, interest_half_life_ms=10 * DAY_MS)
    state, _ = run([(event(0, ts=T0), None), (event(1, ts=T0 + 5 * DAY_MS), None)], params)
    assert state is not None and state.profile.anchor_ms == T0
    # as of the anchor: the newer event weighs 2^(5/10) more, and only its key changed
    assert state.profile.category_affinity["shoes"] == pytest.approx(0.5 * (1 + 2**0.5))
    assert now_value(
        state.profile.category_affinity["shoes"], state, params.affinity_half_life_ms
    ) == pytest.approx(0.5 * (2**-0.5 + 1))
    assert not state.needs_full
    state, _ = apply_event(state, event(2, ts=T0 + 11 * DAY_MS), None, params)
    assert state is not None and state.profile.anchor_ms == T0 + 11 * DAY_MS
    assert state.needs_full  # every weight was rescaled: the next delta carries them all
    expected = 0.5 * (2**-1.1 + 2**-0.6 + 1)
    assert state.profile.category_affinity["shoes"] == pytest.approx(expected)


def test_state_stays_bounded_whatever_a_user_sends() -> None:
    params = ProfileParams(max_affinities=8, max_seen_event_ids=16)
    events = [(event(i, category=f"c{i}", brand=f"b{i}"), None) for i in range(500)]
    dropped: set[tuple[str, str]] = set()
    state = None
    for ev, vector in events:
        state, _ = apply_event(state, ev, vector, params, dim=4, dropped=dropped)
    assert state is not None
    assert len(state.profile.category_affinity) == 8
    assert len(state.profile.brand_affinity) == 8
    assert len(state.seen_event_ids) == 16
    assert ("category_affinity", "c0") in dropped and ("brand_affinity", "b0") in dropped
    assert len(encode_state(state)) < 4_096


def test_duplicates_change_nothing() -> None:
    first = event(1)
    state, outcomes = run([(first, None), (event(2), None), (first, None)])
    assert state is not None and state.profile.version == 2
    assert outcomes[-1] is Outcome.DUPLICATE


def test_delete_user_erases_state() -> None:
    state, outcomes = run([(event(1), None), (event(2, "delete_user", item_id=None), None)])
    assert state is None and outcomes[-1] is Outcome.DELETED


def signals(*words: str, polarity: float | None = None) -> TextSignals:
    return TextSignals([(w, 1 / len(words)) for w in words], polarity)


def test_keywords_are_decayed_and_bounded() -> None:
    params = ProfileParams(max_keywords=3, affinity_half_life_ms=DAY_MS)
    state: UserState | None = None
    day_words = [("boots", "leather"), ("boots", "winter"), ("tent", "camping"), ("tent", "stove")]
    for day, words in enumerate(day_words):
        search = Event(f"s{day}", "u1", T0 + day * DAY_MS, "search", text=" ".join(words))
        state, _ = apply_event(state, search, None, params, dim=4, signals=signals(*words))
    assert state is not None
    keywords = state.profile.keywords
    # Three kept: the recent words beat the older, equally frequent "boots".
    assert set(keywords) == {"tent", "stove", "camping"}
    assert now_value(keywords["tent"], state, DAY_MS) == pytest.approx(0.25 + 0.5)
    assert now_value(keywords["stove"], state, DAY_MS) == pytest.approx(0.5)


def test_sentiment_is_a_decayed_mean_overall_and_per_category() -> None:
    params = ProfileParams(affinity_half_life_ms=DAY_MS)
    reviews = [
        (0, "shoes", 1.0),
        (0, "shoes", 0.5),
        (1, "phones", -1.0),  # a day later: the shoe reviews weigh half as much
    ]
    state: UserState | None = None
    for i, (day, category, polarity) in enumerate(reviews):
        review = Event(
            f"r{i}", "u1", T0 + day * DAY_MS, "review", item_id=f"i{i}", category=category, text="."
        )
        state, _ = apply_event(
            state, review, None, params, dim=4, signals=signals("x", polarity=polarity)
        )
    assert state is not None
    profile = state.profile
    assert profile.sentiment == pytest.approx((0.5 * 1.0 + 0.5 * 0.5 - 1.0) / 2.0)
    assert now_value(profile.sentiment_weight, state, DAY_MS) == pytest.approx(2.0)
    mean, weight = profile.category_sentiment["shoes"]
    assert (mean, now_value(weight, state, DAY_MS)) == pytest.approx((0.75, 1.0))
    assert profile.category_sentiment["phones"][0] == pytest.approx(-1.0)
    # A complaint (no interest weight) still moves sentiment, not the interest vector.
    before, vector = profile.sentiment, profile.interest.copy()
    complaint = Event("c1", "u1", T0 + DAY_MS, "complaint", text="never arrived")
    state, _ = apply_event(
        state, complaint, np.full(4, 0.5, np.float32), params, signals=signals("a", polarity=-1.0)
    )
    assert state is not None and state.profile.sentiment < before
    assert np.array_equal(state.profile.interest, vector)


def test_state_round_trips_through_its_stored_bytes() -> None:
    rng = np.random.default_rng(4)
    events = [
        (event(i, ["view", "purchase", "search"][i % 3], price=2.0, text="q"), unit(rng, 4))
        for i in range(30)
    ]
    state, _ = run(events)
    assert state is not None
    assert state is not None
    again = decode_state(encode_state(state))
    assert np.array_equal(again.profile.interest, state.profile.interest)
    assert public_fields(again.profile, PARAMS) == public_fields(state.profile, PARAMS)
    assert again.seen_event_ids == state.seen_event_ids
    updated, _ = apply_event(again, event(99), unit(rng, 4), PARAMS)  # the restored state updates
    assert updated is not None and updated.profile.version == 31


def test_a_resend_older_than_the_dedupe_memory_is_refused_not_counted_twice() -> None:
    params = ProfileParams(max_seen_event_ids=64)
    state, _ = run([(event(i), None) for i in range(300)], params)
    assert state is not None and len(state.seen_event_ids) == 64
    views = state.profile.counts["view"]
    for old in (3, 150, 200):  # ids long forgotten: their times are behind the horizon
        refused, outcome = apply_event(state, event(old), None, params, dim=4)
        assert outcome is Outcome.UNVERIFIABLE and refused is state
        assert state.profile.counts["view"] == views
    _, outcome = apply_event(state, event(290), None, params, dim=4)
    assert outcome is Outcome.DUPLICATE  # a remembered id is still a plain duplicate
    late = event(1_000, ts=T0 + 290 * 60_000 - 1)  # new, and newer than the horizon
    _, outcome = apply_event(state, late, None, params, dim=4)
    assert outcome is Outcome.APPLIED and state.profile.counts["view"] == views + 1
    assert state.dedupe_horizon_ms < T0 + 290 * 60_000 and len(state.dedupe_marks) <= 3
