"""The per-user profile step: SGD on the interest vector, decay, bounds, dedupe, deltas."""

from __future__ import annotations

import numpy as np
import pytest

from operators.deltas import materialize
from operators.events import Event
from operators.nlp import TextSignals
from operators.profile import DAY_MS, ProfileParams, UserState, apply_event, sgd_step

T0 = 1_714_564_800_000
PARAMS = ProfileParams()


def event(i: int, kind: str = "view", ts: int | None = None, **fields: object) -> Event:
    defaults: dict[str, object] = {"item_id": f"i{i}", "category": "shoes", "brand": "acme"}
    return Event(
        f"e{i}", "u1", T0 + i * 60_000 if ts is None else ts, kind, **{**defaults, **fields}
    )


def run(events: list[tuple[Event, np.ndarray | None]], params: ProfileParams = PARAMS):
    state: UserState | None = None
    outputs = []
    for ev, vector in events:
        state, out = apply_event(state, ev, vector, params, now_ms=0, dim=4)
        outputs.extend(out)
    return state, outputs


def test_sgd_step_matches_the_weighted_mean_it_minimises() -> None:
    rng = np.random.default_rng(1)
    targets = rng.standard_normal((50, 6)).astype(np.float32)
    weights = rng.uniform(0.5, 4, 50)
    vector, total = np.zeros(6, np.float32), 0.0
    for target, weight in zip(targets, weights, strict=True):
        vector, total, _ = sgd_step(vector, total, target, float(weight))
    expected = (weights[:, None] * targets).sum(0) / weights.sum()
    assert np.allclose(vector, expected, atol=1e-5)


def test_loss_falls_on_a_stream_of_one_interest() -> None:
    rng = np.random.default_rng(2)
    interest = np.array([1, 0, 0, 0], np.float32)
    events = [
        (event(i), (interest + 0.1 * rng.standard_normal(4)).astype(np.float32)) for i in range(40)
    ]
    state, _ = run(events)
    losses = []
    vector, total = np.zeros(4, np.float32), 0.0
    for _, x in events:
        losses.append(float(np.sum((vector - interest) ** 2)))
        vector, total, _ = sgd_step(vector, total, x, 1.0)
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
    state, outputs = run(events)
    assert state is not None
    profile = state.profile
    assert profile.counts == {"purchase": 1, "refund": 1, "view": 1, "login": 1}
    assert (profile.spend, profile.refunded) == (20.0, 10.0)
    assert profile.category_affinity["shoes"] > profile.category_affinity["bags"] > 0
    assert [d.version for d in outputs] == [1, 2, 3, 4]
    # a login changes counts only; the patch says exactly that
    assert set(outputs[-1].changed) == {"counts", "last_seen_ms"}


def test_late_event_is_discounted_not_reordered() -> None:
    state, _ = run(
        [(event(1, ts=T0 + 30 * DAY_MS), None), (event(2, ts=T0, category="bags"), None)]
    )
    assert state is not None
    assert state.profile.last_seen_ms == T0 + 30 * DAY_MS
    assert state.profile.first_seen_ms == T0
    assert state.profile.category_affinity["bags"] == pytest.approx(0.25)  # half-life 30 days


def test_state_stays_bounded_whatever_a_user_sends() -> None:
    params = ProfileParams(max_affinities=8, max_seen_event_ids=16)
    events = [(event(i, category=f"c{i}", brand=f"b{i}"), None) for i in range(500)]
    state, _ = run(events, params)
    assert state is not None
    assert len(state.profile.category_affinity) == 8
    assert len(state.profile.brand_affinity) == 8
    assert len(state.seen_event_ids) == 16


def test_duplicates_are_dead_lettered_and_change_nothing() -> None:
    first = event(1)
    state, outputs = run([(first, None), (event(2), None), (first, None)])
    assert state is not None and state.profile.version == 2
    assert outputs[-1].reason == "duplicate_event"


def test_delete_user_erases_state_and_emits_a_tombstone() -> None:
    state, outputs = run([(event(1), None), (event(2, "delete_user", item_id=None), None)])
    assert state is None
    assert (outputs[-1].kind, outputs[-1].version, outputs[-1].incarnation) == (
        "tombstone",
        2,
        "e1",
    )


def test_deltas_materialise_to_exactly_the_state() -> None:
    rng = np.random.default_rng(3)
    kinds = ["view", "click", "search", "purchase", "add_to_cart", "login"]
    events = []
    for i in range(230):
        kind = kinds[i % len(kinds)]
        ts = T0 + int(rng.integers(0, 10 * DAY_MS))  # out of order on purpose
        vector = None if kind == "login" else rng.standard_normal(4).astype(np.float32)
        events.append((event(i, kind, ts=ts, category=f"c{i % 5}", price=1.5, text="q"), vector))
    state, outputs = run(events, ProfileParams(full_every=50))
    assert state is not None
    assert [d.kind for d in outputs].count("full") == 5  # versions 1, 50, 100, 150, 200
    profile = materialize(outputs)["u1"]
    assert profile.version == state.profile.version == 230
    assert profile.fields == state.profile.public_fields()
    assert np.array_equal(profile.interest, state.profile.interest)  # exact, not just close
    # a consumer that joins late starts at the last full delta and still ends exact
    late = materialize(outputs[120:])["u1"]
    assert np.array_equal(late.interest, state.profile.interest)


def signals(*words: str, polarity: float | None = None) -> TextSignals:
    return TextSignals([(w, 1 / len(words)) for w in words], polarity)


def test_keywords_are_decayed_bounded_and_carried_by_deltas() -> None:
    params = ProfileParams(max_keywords=3, affinity_half_life_ms=DAY_MS)
    state: UserState | None = None
    deltas = []
    day_words = [("boots", "leather"), ("boots", "winter"), ("tent", "camping"), ("tent", "stove")]
    for day, words in enumerate(day_words):
        search = Event(f"s{day}", "u1", T0 + day * DAY_MS, "search", text=" ".join(words))
        state, out = apply_event(
            state, search, None, params, now_ms=0, dim=4, signals=signals(*words)
        )
        deltas.extend(out)
    assert state is not None
    keywords = state.profile.keywords
    # Three kept: the recent words beat the older, equally frequent "boots".
    assert set(keywords) == {"tent", "stove", "camping"}
    assert keywords["tent"] == pytest.approx(0.25 + 0.5) and keywords["stove"] == 0.5
    assert all("keywords" in d.changed for d in deltas)
    assert materialize(deltas)["u1"].fields["keywords"] == keywords


def test_sentiment_is_a_decayed_mean_overall_and_per_category() -> None:
    params = ProfileParams(affinity_half_life_ms=DAY_MS)
    reviews = [
        (0, "shoes", 1.0),
        (0, "shoes", 0.5),
        (1, "phones", -1.0),  # a day later: the shoe reviews weigh half as much
    ]
    state: UserState | None = None
    deltas = []
    for i, (day, category, polarity) in enumerate(reviews):
        review = Event(
            f"r{i}",
            "u1",
            T0 + day * DAY_MS,
            "review",
            item_id=f"i{i}",
            category=category,
            text="...",
        )
        state, out = apply_event(
            state, review, None, params, now_ms=0, dim=4, signals=signals("x", polarity=polarity)
        )
        deltas.extend(out)
    assert state is not None
    profile = state.profile
    assert profile.sentiment == pytest.approx((0.5 * 1.0 + 0.5 * 0.5 - 1.0) / 2.0)
    assert profile.sentiment_weight == pytest.approx(2.0)
    assert profile.category_sentiment["shoes"] == pytest.approx((0.75, 1.0))
    assert profile.category_sentiment["phones"] == pytest.approx((-1.0, 1.0))
    # A complaint (no interest weight) still moves sentiment, not the interest vector.
    before = profile.sentiment
    complaint = Event("c1", "u1", T0 + DAY_MS, "complaint", text="never arrived")
    state, out = apply_event(
        state,
        complaint,
        np.ones(4, np.float32),
        params,
        now_ms=0,
        signals=signals("arrived", polarity=-1.0),
    )
    assert state is not None and state.profile.sentiment < before
    assert out[0].interest_delta is None
    materialized = materialize([*deltas, *out])["u1"].fields
    assert materialized["sentiment"] == state.profile.sentiment
    assert materialized == state.profile.public_fields()
