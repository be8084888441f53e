"""A learned fraud score for purchases, trained on verdicts that arrive days late.

Rules (:mod:`operators.apps.risk`) explain themselves but only catch what someone thought
of. Card issuers also learn from confirmed fraud: chargebacks and analyst verdicts that
arrive days after the purchase, in any order. This module holds that loop's pure parts:

- :class:`FeedbackLedger` keeps each scored purchase's features
  (:data:`~operators.apps.risk_features.FEATURES`) until its verdict is known: a fraud
  verdict makes it a positive example at once; a purchase without one after ``settle_days``
  becomes a genuine example (an issuer reports disputes only).
- :func:`train_risk_model` fits a random forest (scikit-learn) on the settled examples of the
  last ``train_days``. Forests need no feature scaling, take counts and ratios as they are,
  and on the Handbook's simulator (tuned on one seed, checked on others) beat the logistic
  regression and gradient boosting tried beside them; see docs/risk.md.
- :func:`alert_threshold` turns scores into alerts for a stated budget: the score above which
  the recent purchases would have raised ``alerts_per_day``.

Every :class:`RiskModel` carries a version (``<name>@<settled-until date>``) that alerts cite.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(400, 3)); y = (X[:, 0] > 1.2).astype(int)
>>> model = train_risk_model(X, y, 0, RiskModelParams(trees=10), names=("a", "b", "c"))
>>> model.version, model.frauds == int(y.sum())
('forest-v1@1970-01-01', True)
>>> bool(model.score(np.array([[2.0, 0, 0], [-2.0, 0, 0]]))[0] > 0.5)
True
"""

from __future__ import annotations

import datetime as dt
import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from operators.apps.risk_features import FEATURES
from operators.ingest.units import DAY_MS

if TYPE_CHECKING:
    from sklearn.tree import DecisionTreeClassifier


@dataclass(frozen=True)
class RiskModelParams:
    """How the score learns: the forest's size and the settled examples it is fit on."""

    name: str = "forest-v1"
    trees: int = 50
    max_depth: int = 12
    #: Settled examples of this many days (ending at the newest settled one) train a model.
    train_days: int = 56
    #: A purchase without a fraud verdict after this long counts as genuine.
    settle_days: float = 7.0
    #: No model until the settled examples hold this many frauds.
    min_frauds: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.trees, self.max_depth, self.train_days) < 1:
            raise ValueError("trees, max_depth and train_days must be >= 1")
        if self.settle_days < 0 or self.min_frauds < 1:
            raise ValueError("settle_days must be >= 0 and min_frauds >= 1")


class Tree(msgspec.Struct, array_like=True, frozen=True):
    """One decision tree as flat node arrays (a leaf has ``left == -1``)."""

    feature: list[int]
    threshold: list[float]
    left: list[int]
    right: list[int]
    fraud_share: list[float]


class RiskModel(msgspec.Struct, frozen=True):
    """A fitted forest as plain data: saved as MessagePack, scored without scikit-learn.

    ``threshold`` is the score an alert needs (:func:`alert_threshold`; 1.0 before one is
    set). ``features`` names the columns it was trained on, so a model and a flow that
    disagree on them are caught when the model is loaded.
    """

    version: str
    features: tuple[str, ...]
    trees: tuple[Tree, ...]
    trained_until_ms: int
    examples: int
    frauds: int
    threshold: float = 1.0

    def score_one(self, row: Sequence[float]) -> float:
        """Fraud probability of one purchase: the trees' mean leaf fraud share."""
        # The forest split on float32 values; compare the same values.
        x = np.asarray(row, dtype=np.float32).tolist()
        total = 0.0
        for tree in self.trees:
            feature, threshold, left, right = tree.feature, tree.threshold, tree.left, tree.right
            node = 0
            while left[node] != -1:
                node = left[node] if x[feature[node]] <= threshold[node] else right[node]
            total += tree.fraud_share[node]
        return total / len(self.trees)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Fraud probability of each row of ``rows`` (columns as :attr:`features`)."""
        return np.array([self.score_one(row) for row in rows], dtype=np.float64)


def save_model(model: RiskModel, path: str | Path) -> None:
    """Write ``model`` as MessagePack (plain numbers: no code runs when it is read).

    The file is replaced in one step (written beside it, then renamed), so a flow that
    reloads it on change never reads half a model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(msgspec.msgpack.encode(model))
    os.replace(partial, path)


def load_model(path: str | Path, features: Sequence[str]) -> RiskModel:
    """Read a model :func:`save_model` wrote; refuse one trained on other ``features``."""
    try:
        model = msgspec.msgpack.decode(Path(path).read_bytes(), type=RiskModel)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path}: not a risk model ({exc})") from exc
    if tuple(model.features) != tuple(features):
        raise ValueError(f"{path}: trained on other features than this release computes")
    return model


def _tree(estimator: DecisionTreeClassifier) -> Tree:
    nodes = estimator.tree_
    counts = nodes.value[:, 0, :]
    totals = counts.sum(axis=1)
    fraud_column = list(estimator.classes_).index(1) if 1 in estimator.classes_ else None
    share = (
        counts[:, fraud_column] / np.where(totals > 0, totals, 1)
        if fraud_column is not None
        else np.zeros(len(totals))
    )
    return Tree(
        nodes.feature.tolist(),
        nodes.threshold.tolist(),
        nodes.children_left.tolist(),
        nodes.children_right.tolist(),
        share.tolist(),
    )


def train_risk_model(
    features: np.ndarray,
    verdicts: np.ndarray,
    trained_until_ms: int,
    params: RiskModelParams,
    names: Sequence[str] = FEATURES,
) -> RiskModel:
    """Fit the forest on settled examples (``verdicts``: 1 fraud, 0 genuine)."""
    # Imported here: scikit-learn takes ~1 s to import, and only training needs it (the
    # flow scores with the plain node arrays).
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(
        n_estimators=params.trees,
        max_depth=params.max_depth,
        n_jobs=1,  # the flow's workers already use the cores
        random_state=params.seed,
    )
    forest.fit(features, verdicts)
    day = dt.datetime.fromtimestamp(trained_until_ms / 1_000, dt.UTC).date().isoformat()
    return RiskModel(
        version=f"{params.name}@{day}",
        features=tuple(names),
        trees=tuple(_tree(tree) for tree in forest.estimators_),
        trained_until_ms=trained_until_ms,
        examples=len(verdicts),
        frauds=int(np.sum(verdicts)),
    )


def fit_from_feedback(
    purchases: Iterable[tuple[str, int, Sequence[float]]],
    verdicts: Iterable[tuple[str, int]],
    now_ms: int,
    params: RiskModelParams,
    names: Sequence[str] = FEATURES,
) -> RiskModel:
    """The model a retraining at ``now_ms`` fits: what had settled by then, nothing later.

    ``purchases`` are (event id, event time, features) as the flow logged them; ``verdicts``
    (purchase event id, time received) the fraud verdicts. Purchases from ``now_ms`` on and
    verdicts received after it are left out, so a backtest sees what production would have.
    """
    ledger = FeedbackLedger(settle_ms=round(params.settle_days * DAY_MS))
    for event_id, ts_ms, row in purchases:
        if ts_ms < now_ms:
            ledger.add_purchase(event_id, ts_ms, tuple(row))
    for event_id, received_ms in verdicts:
        if received_ms <= now_ms:
            ledger.add_fraud_verdict(event_id)
    ledger.settle(now_ms)
    since = now_ms - ledger.settle_ms - params.train_days * DAY_MS
    features, labels, newest = ledger.training_set(since)
    frauds = int(labels.sum())
    if frauds < params.min_frauds:
        raise ValueError(f"{frauds} settled frauds, fewer than the {params.min_frauds} needed")
    return train_risk_model(features, labels, newest, params, names)


def with_alert_budget(
    model: RiskModel, recent: np.ndarray, days: float, alerts_per_day: float
) -> RiskModel:
    """``model`` alerting at the score that gives ``alerts_per_day`` on ``recent`` purchases."""
    threshold = alert_threshold(model.score(recent), days, alerts_per_day)
    return msgspec.structs.replace(model, threshold=threshold)


def alert_threshold(recent_scores: np.ndarray, days: float, alerts_per_day: float) -> float:
    """The score above which ``recent_scores`` (spanning ``days``) give ``alerts_per_day``.

    >>> round(alert_threshold(np.linspace(0, 1, 101), days=1.0, alerts_per_day=10), 2)
    0.91
    """
    if len(recent_scores) == 0 or days <= 0:
        return 1.0
    wanted = max(0, min(len(recent_scores), round(alerts_per_day * days)))
    if wanted == 0:
        return 1.0
    ranked = np.sort(recent_scores)[::-1]
    return float(ranked[wanted - 1]) if wanted < len(ranked) else 0.0


@dataclass
class FeedbackLedger:
    """Scored purchases waiting for their verdict, and the examples they settled into.

    Purchases must be added in (roughly) event-time order; verdicts may come in any order and
    for purchases already settled as genuine (a late chargeback turns the example into fraud).
    """

    settle_ms: int
    pending: deque[tuple[str, int, tuple[float, ...]]] = field(default_factory=deque)
    frauds: set[str] = field(default_factory=set)
    #: Settled examples: (event time, features, 1 fraud / 0 genuine), oldest first.
    examples: list[tuple[int, tuple[float, ...], int]] = field(default_factory=list)
    settled_index: dict[str, int] = field(default_factory=dict)

    def add_purchase(self, event_id: str, ts_ms: int, features: tuple[float, ...]) -> None:
        self.pending.append((event_id, ts_ms, features))

    def add_fraud_verdict(self, event_id: str) -> None:
        """A chargeback or analyst verdict: the purchase was fraud."""
        index = self.settled_index.get(event_id)
        if index is not None:
            ts_ms, features, _ = self.examples[index]
            self.examples[index] = (ts_ms, features, 1)
        else:
            self.frauds.add(event_id)

    def settle(self, now_ms: int) -> None:
        """Turn every purchase older than the settle time (or with a verdict) into an example."""
        keep: deque[tuple[str, int, tuple[float, ...]]] = deque()
        while self.pending:
            event_id, ts_ms, features = self.pending.popleft()
            if event_id in self.frauds:
                self.frauds.discard(event_id)
                verdict = 1
            elif ts_ms + self.settle_ms <= now_ms:
                verdict = 0
            else:
                keep.append((event_id, ts_ms, features))
                continue
            self.settled_index[event_id] = len(self.examples)
            self.examples.append((ts_ms, features, verdict))
        self.pending = keep

    def training_set(self, since_ms: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Features, verdicts and the newest event time of the examples from ``since_ms`` on."""
        rows = [e for e in self.examples if e[0] >= since_ms]
        if not rows:
            return np.zeros((0, 0)), np.zeros(0, dtype=np.int8), since_ms
        features = np.array([r[1] for r in rows], dtype=np.float32)
        verdicts = np.array([r[2] for r in rows], dtype=np.int8)
        return features, verdicts, max(r[0] for r in rows)
