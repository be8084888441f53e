"""The learned score's features: windows equal a recount, and no verdict leaks early."""

from __future__ import annotations

import math
import random

import pytest

from operators.apps.risk_features import (
    FEATURES,
    HISTORY_DAYS,
    ItemHistory,
    SpendHistory,
    purchase_features,
    record_fraud,
    record_purchase,
    record_sale,
)
from operators.ingest.units import DAY_MS

T0 = 20_001 * DAY_MS  # a Saturday at midnight, UTC


def features(spend: SpendHistory | None, item: ItemHistory | None, ts: int, amount: float,
             settle_days: int = 7) -> dict[str, float]:  # fmt: skip
    return dict(zip(FEATURES, purchase_features(spend, item, ts, amount, settle_days), strict=True))


def test_user_windows_equal_a_recount_of_the_purchases() -> None:
    rng = random.Random(5)
    history: list[tuple[int, float]] = []
    spend = None
    ts = T0
    for _ in range(400):
        ts += rng.randint(0, 3 * DAY_MS)  # some days without purchases, some with several
        amount = round(rng.lognormvariate(3, 1), 2)
        got = features(spend, None, ts, amount)
        today = ts // DAY_MS
        for span, name in ((1, "user_n_1d"), (7, "user_n_7d"), (30, "user_n_30d")):
            assert got[name] == sum(1 for t, _ in history if t // DAY_MS > today - span)
        recent = [math.log1p(a) for t, a in history if t // DAY_MS > today - 30]
        if recent:
            assert got["user_mean_log_30d"] == pytest.approx(sum(recent) / len(recent))
            mean = sum(recent) / len(recent)
            assert got["amount_vs_user"] == pytest.approx(math.log1p(amount) - mean)
        assert got["days_since_last"] == (
            min(60.0, (ts - history[-1][0]) / DAY_MS) if history else 60.0
        )
        history.append((ts, amount))
        spend = record_purchase(spend, ts, amount)
        assert len(spend.days) <= HISTORY_DAYS


def test_out_of_order_purchases_land_in_their_own_day() -> None:
    spend = record_purchase(None, T0 + 5 * DAY_MS, 10.0)
    spend = record_purchase(spend, T0 + 2 * DAY_MS, 10.0)  # late, three days earlier
    spend = record_purchase(spend, T0 + 4 * DAY_MS, 10.0)
    assert spend.days == [T0 // DAY_MS + d for d in (2, 4, 5)] and spend.counts == [1, 1, 1]
    assert features(spend, None, T0 + 5 * DAY_MS + 1, 10.0)["user_n_1d"] == 1


def test_an_amount_far_above_the_users_own_scores_high() -> None:
    spend = None
    for day in range(20):
        spend = record_purchase(spend, T0 + day * DAY_MS + 12 * 3_600_000, 20.0 + day % 3)
    usual = features(spend, None, T0 + 21 * DAY_MS, 21.0)
    fivefold = features(spend, None, T0 + 21 * DAY_MS, 105.0)
    assert abs(usual["amount_z_user"]) < 1 < 3 < fivefold["amount_z_user"]


def test_item_fraud_counts_only_verdicts_already_received() -> None:
    item = None
    for day in range(10):
        item = record_sale(item, T0 + day * DAY_MS)
    before = features(None, item, T0 + 10 * DAY_MS, 5.0)
    assert before["item_known_fraud_30d"] == 0 and before["item_n_30d"] == 10
    item = record_fraud(item, T0 + 2 * DAY_MS)  # the verdict on day 2's sale arrives
    after = features(None, item, T0 + 10 * DAY_MS, 5.0)
    assert after["item_known_fraud_30d"] == 1
    assert after["item_fraud_day_share"] == 1.0 and after["item_days_since_fraud"] == 8


def test_settled_windows_end_settle_days_ago() -> None:
    item = None
    for day in range(17):
        item = record_sale(item, T0 + day * DAY_MS)
    for day in (9, 10):
        item = record_fraud(item, T0 + day * DAY_MS)
    got = features(None, item, T0 + 17 * DAY_MS, 5.0, settle_days=7)
    # Settled through day 10: day 10's sale is the last settled day and it was fraud.
    assert got["item_settled_n_1d"] == 1 and got["item_settled_risk_1d"] == 1.0
    assert got["item_settled_n_7d"] == 7 and got["item_settled_risk_7d"] == pytest.approx(2 / 7)
    assert got["item_n_7d"] == 6  # days 11-16; the purchase being scored is not counted


def test_records_return_new_histories() -> None:
    spend = record_purchase(None, T0, 10.0)
    item = record_sale(None, T0)
    record_purchase(spend, T0 + 1, 99.0)
    record_fraud(item, T0)
    assert spend.counts == [1] and item.frauds == [0]


def test_night_and_weekend() -> None:
    saturday_3am = T0 + 3 * 3_600_000
    got = features(None, None, saturday_3am, 10.0)
    assert (got["night"], got["weekend"]) == (1.0, 1.0)
    monday_noon = T0 + 2 * DAY_MS + 12 * 3_600_000
    got = features(None, None, monday_noon, 10.0)
    assert (got["night"], got["weekend"]) == (0.0, 0.0)
