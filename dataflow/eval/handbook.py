"""The Fraud Detection Handbook's protocol: test weeks, metrics, baselines, replayed features.

The Handbook (Le Borgne et al., chapter 3) publishes baseline detectors on its simulated
transactions (:mod:`dataflow.sim.handbook`) with this protocol: train on one week (from
2018-07-25), leave a 7-day delay period (verdicts not yet known), test on the following
week, and drop from each test day the cards already known to be compromised. It reports
AUC, average precision (AP) and card precision@100 (per test day, the share of the 100
highest-scored cards that were defrauded that day, averaged).

:func:`replayed_features` computes the project's features the way the flow's user and item
steps do (:mod:`operators.apps.learned_risk`), in event-time order with each verdict
arriving 7 days after its transaction: the reference the flow's ``risk_scores`` output is
checked against. :func:`handbook_baseline_features` is the Handbook's own 15 features.
``benchmarks/handbook_bench.py`` puts them side by side.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dataflow.sim.handbook import Simulation
from operators.apps.risk_features import (
    FEATURES,
    ItemHistory,
    SpendHistory,
    purchase_features,
    record_fraud,
    record_purchase,
    record_sale,
)
from operators.apps.risk_model import RiskModelParams, fit_from_feedback
from operators.ingest.units import DAY_MS

#: Chapter 3.4, test week after a 7-day delay (AUC, AP, card precision@100).
PUBLISHED = {
    "logistic regression": (0.871, 0.606, 0.291),
    "random forest": (0.867, 0.658, 0.287),
    "XGBoost": (0.862, 0.639, 0.279),
}
TRAIN_START_DAY = 115  # 2018-07-25, days after 2018-04-01
DELAY_DAYS = 7
WEEK = 7


def protocol_test_set(sim: Simulation) -> np.ndarray:
    """The Handbook's test week, without the cards known to be compromised on each test day."""
    day, customer, fraud = sim.day, sim.customer, sim.fraud
    train = (day >= TRAIN_START_DAY) & (day < TRAIN_START_DAY + WEEK)
    known = set(customer[train & (fraud == 1)].tolist())
    keep = np.zeros(len(day), dtype=bool)
    for k in range(WEEK):
        # Verdicts known the day before a test day: frauds up to delay days before it.
        seen = day == TRAIN_START_DAY + WEEK + k - 1
        known |= set(customer[seen & (fraud == 1)].tolist())
        today = day == TRAIN_START_DAY + WEEK + DELAY_DAYS + k
        keep |= today & ~np.isin(customer, list(known))
    return keep


def card_precision_at(sim: Simulation, keep: np.ndarray, scores: np.ndarray, k: int = 100) -> float:
    """Per test day, the share of the ``k`` highest-scored cards defrauded that day; the mean."""
    frame = pd.DataFrame(
        {
            "day": sim.day[keep],
            "card": sim.customer[keep],
            "score": scores,
            "fraud": sim.fraud[keep],
        }
    )
    cards = frame.groupby(["day", "card"]).max()
    daily = cards.groupby(level="day", group_keys=False).apply(
        lambda d: d.nlargest(k, "score")["fraud"].sum() / k
    )
    return float(daily.mean())


def metrics(sim: Simulation, keep: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    truth = sim.fraud[keep]
    return {
        "auc": round(float(roc_auc_score(truth, scores)), 3),
        "average_precision": round(float(average_precision_score(truth, scores)), 3),
        "card_precision_at_100": round(card_precision_at(sim, keep, scores), 3),
    }


def replayed_features(sim: Simulation, settle_days: int = DELAY_DAYS) -> np.ndarray:
    """Every transaction's features as the flow computes them, verdicts ``DELAY_DAYS`` late.

    As in the flow, a verdict received at *t* counts from then on, for the terminal's sales
    of its purchase's day (the chargebacks name it: ``ref_ts``); at the same millisecond a
    verdict comes first.
    """
    rows = np.zeros((len(sim.ts_ms), len(FEATURES)), dtype=np.float32)
    spend: dict[int, SpendHistory] = {}
    items: dict[int, ItemHistory | None] = {}
    frauds = np.flatnonzero(sim.fraud).tolist()
    received = (sim.ts_ms[frauds] + DELAY_DAYS * DAY_MS).tolist()
    ts, cust, term = sim.ts_ms.tolist(), sim.customer.tolist(), sim.terminal.tolist()
    amount = sim.amount.tolist()
    j = 0
    for i in range(len(ts)):
        while j < len(frauds) and received[j] <= ts[i]:
            items[term[frauds[j]]] = record_fraud(items.get(term[frauds[j]]), ts[frauds[j]])
            j += 1
        c, t = cust[i], term[i]
        rows[i] = purchase_features(spend.get(c), items.get(t), ts[i], amount[i], settle_days)
        spend[c] = record_purchase(spend.get(c), ts[i], amount[i])
        items[t] = record_sale(items.get(t), ts[i])
    return rows


def first_test_day_ms(sim: Simulation) -> int:
    """When the test week starts: after the training week and the delay period."""
    return sim.params.start_ms + (TRAIN_START_DAY + WEEK + DELAY_DAYS) * DAY_MS


def learned_scores(
    sim: Simulation, features: np.ndarray, keep: np.ndarray, train_days: int
) -> tuple[np.ndarray, dict[str, object]]:
    """Fit on what had settled when the test week starts (:func:`fit_from_feedback`); score
    the test week with that model, as the Handbook's protocol does."""
    params = RiskModelParams(train_days=train_days)
    fraud_ids = np.flatnonzero(sim.fraud).tolist()
    received = (sim.ts_ms[fraud_ids] + DELAY_DAYS * DAY_MS).tolist()
    ts = sim.ts_ms.tolist()
    started = time.perf_counter()
    model = fit_from_feedback(
        ((str(i), ts[i], features[i]) for i in range(len(ts))),
        zip(map(str, fraud_ids), received, strict=True),
        first_test_day_ms(sim),
        params,
    )
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = model.score(features[keep])
    score_us = (time.perf_counter() - started) / max(1, int(keep.sum())) * 1e6
    return scores, {
        "model_version": model.version,
        "examples": model.examples,
        "frauds": model.frauds,
        "fit_s": round(fit_s, 1),
        "score_us_per_purchase": round(score_us, 1),
    }


def handbook_baseline_features(sim: Simulation) -> np.ndarray:
    """The Handbook's 15 features (chapter 3.3), computed with pandas rolling windows."""
    frame = pd.DataFrame(
        {
            "ts": pd.to_datetime(sim.ts_ms, unit="ms"),
            "customer": sim.customer,
            "terminal": sim.terminal,
            "amount": sim.amount,
            "fraud": sim.fraud,
            "row": np.arange(len(sim.ts_ms)),
        }
    )
    out = pd.DataFrame(index=frame.row)
    out["amount"] = sim.amount
    out["weekend"] = (frame.ts.dt.day_of_week >= 5).astype(int).to_numpy()
    out["night"] = (frame.ts.dt.hour <= 6).astype(int).to_numpy()
    by_customer = frame.sort_values(["customer", "ts"]).set_index("ts")
    grouped = by_customer.groupby("customer")["amount"]
    for w in (1, 7, 30):
        count = grouped.rolling(f"{w}D").count().to_numpy()
        total = grouped.rolling(f"{w}D").sum().to_numpy()
        rows = by_customer["row"].to_numpy()
        out.loc[rows, f"c_n_{w}"] = count
        out.loc[rows, f"c_avg_{w}"] = total / count
    by_terminal = frame.sort_values(["terminal", "ts"]).set_index("ts")
    fraud = by_terminal.groupby("terminal")["fraud"]
    rows = by_terminal["row"].to_numpy()
    delay_f = fraud.rolling(f"{DELAY_DAYS}D").sum().to_numpy()
    delay_n = fraud.rolling(f"{DELAY_DAYS}D").count().to_numpy()
    for w in (1, 7, 30):
        span = f"{DELAY_DAYS + w}D"
        n = fraud.rolling(span).count().to_numpy() - delay_n
        f = fraud.rolling(span).sum().to_numpy() - delay_f
        out.loc[rows, f"t_n_{w}"] = n
        out.loc[rows, f"t_risk_{w}"] = np.divide(f, n, out=np.zeros_like(f), where=n > 0)
    return out.to_numpy(dtype=np.float64)


def baseline_scores(sim: Simulation, keep: np.ndarray) -> dict[str, np.ndarray]:
    features = handbook_baseline_features(sim)
    train = (sim.day >= TRAIN_START_DAY) & (sim.day < TRAIN_START_DAY + WEEK)
    models = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(random_state=0)),
        "random forest": make_pipeline(
            StandardScaler(), RandomForestClassifier(random_state=0, n_jobs=-1)
        ),
    }
    out = {}
    for name, model in models.items():
        model.fit(features[train], sim.fraud[train])
        out[name] = model.predict_proba(features[keep])[:, 1]
    return out
