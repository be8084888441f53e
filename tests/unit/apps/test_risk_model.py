"""The learned score's loop: verdicts settle examples, the forest learns, budgets set thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from operators.apps.risk_model import (
    FeedbackLedger,
    RiskModelParams,
    alert_threshold,
    load_model,
    save_model,
    train_risk_model,
)
from operators.ingest.units import DAY_MS

SETTLE = 7 * DAY_MS


def test_a_purchase_settles_as_genuine_only_after_the_settle_time() -> None:
    ledger = FeedbackLedger(SETTLE)
    ledger.add_purchase("p1", 0, (1.0,))
    ledger.settle(SETTLE - 1)
    assert ledger.examples == [] and len(ledger.pending) == 1
    ledger.settle(SETTLE)
    assert ledger.examples == [(0, (1.0,), 0)] and not ledger.pending


def test_a_fraud_verdict_settles_at_once_even_before_its_purchase_is_seen_settling() -> None:
    ledger = FeedbackLedger(SETTLE)
    ledger.add_purchase("p1", 0, (1.0,))
    ledger.add_purchase("p2", 10, (2.0,))
    ledger.add_fraud_verdict("p2")
    ledger.settle(DAY_MS)
    assert ledger.examples == [(10, (2.0,), 1)] and [p[0] for p in ledger.pending] == ["p1"]


def test_a_late_chargeback_turns_a_genuine_example_into_fraud() -> None:
    ledger = FeedbackLedger(SETTLE)
    ledger.add_purchase("p1", 0, (1.0,))
    ledger.settle(SETTLE)
    ledger.add_fraud_verdict("p1")  # 30 days late
    assert ledger.examples == [(0, (1.0,), 1)]


def test_verdicts_in_any_order_give_the_same_examples() -> None:
    rng = np.random.default_rng(3)
    ids = [f"p{i}" for i in range(50)]
    frauds = [i for i in ids if rng.random() < 0.3]
    results = []
    for order in (frauds, frauds[::-1]):
        ledger = FeedbackLedger(SETTLE)
        for n, event_id in enumerate(ids):
            ledger.add_purchase(event_id, n * 1_000, (float(n),))
        for event_id in order:
            ledger.add_fraud_verdict(event_id)
        ledger.settle(100 * DAY_MS)
        results.append(sorted(ledger.examples))
    assert results[0] == results[1]
    assert sum(e[2] for e in results[0]) == len(frauds)


def test_the_forest_learns_a_pattern_and_names_its_version() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2_000, 4))
    y = ((x[:, 1] > 1.0) & (x[:, 2] < 0)).astype(int)
    model = train_risk_model(x, y, 1_530_000_000_000, RiskModelParams(), names=tuple("abcd"))
    fresh = rng.normal(size=(2_000, 4))
    truth = (fresh[:, 1] > 1.0) & (fresh[:, 2] < 0)
    scores = model.score(fresh)
    assert scores[truth].mean() > 0.7 > 0.1 > scores[~truth].mean()
    assert model.version == "forest-v1@2018-06-26" and model.frauds == int(y.sum())


@pytest.mark.parametrize("budget", [0, 1, 5, 50])
def test_a_threshold_gives_at_most_the_budget_of_alerts(budget: int) -> None:
    rng = np.random.default_rng(budget)
    scores = rng.random(3_000)
    threshold = alert_threshold(scores, days=3.0, alerts_per_day=budget)
    assert (scores >= threshold).sum() == min(len(scores), 3 * budget) or budget == 0
    if budget == 0:
        assert threshold == 1.0


def test_params_are_checked() -> None:
    with pytest.raises(ValueError):
        RiskModelParams(trees=0)
    with pytest.raises(ValueError):
        RiskModelParams(settle_days=-1)


def test_the_plain_data_forest_scores_as_scikit_learn_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=(3_000, 5)).astype(np.float32)
    y = (x[:, 0] * x[:, 3] > 2.5).astype(int)
    params = RiskModelParams(trees=20, max_depth=8, seed=4)
    model = train_risk_model(x, y, 0, params, names=tuple("abcde"))
    forest = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=4).fit(x, y)
    fresh = rng.lognormal(size=(500, 5))
    assert np.allclose(model.score(fresh), forest.predict_proba(fresh)[:, 1], atol=1e-9)
    save_model(model, tmp_path / "model.msgpack")
    again = load_model(tmp_path / "model.msgpack", tuple("abcde"))
    assert again == model
    with pytest.raises(ValueError, match="other features"):
        load_model(tmp_path / "model.msgpack", tuple("abcdf"))
    (tmp_path / "junk").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="not a risk model"):
        load_model(tmp_path / "junk", tuple("abcde"))
