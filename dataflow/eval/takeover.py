"""Train the takeover score: which purchases from a suspected origin are the intruder's.

The rules open a suspicion when a user's account is used from a new origin (a new device
and IP, or a new IP on a known device at login). Whether a purchase from that origin is the
owner's or an intruder's is the hard part: ratio thresholds traded recall for precision one
for one there. This module learns it from labelled episodes instead:

1. :func:`suspected_purchases` folds each stream through the rules (:func:`fold_risk`) with
   a scorer that records every suspected purchase's :data:`TAKEOVER_FEATURES` and escalates
   none, and labels each by the stream's labels (``account_takeover`` or not);
2. :func:`train_takeover` picks the alert threshold on scores each stream got from a forest
   fit on the *other* streams (leave one stream out), as the lowest score at which the
   suspicions it would escalate are right at least ``precision`` of the time, then fits the
   shipped forest on every stream.

    profilestream train-takeover --events a.jsonl --labels a.labels.jsonl \\
        --events b.jsonl --labels b.labels.jsonl --out takeover-model.msgpack

``benchmarks/train_takeover.py`` makes the shipped model this way from the generator's
tuning streams.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from dataflow.eval.risk import fold_risk
from operators.apps import TAKEOVER_FEATURES, RiskParams
from operators.apps.risk_model import RiskModel, RiskModelParams, train_risk_model
from operators.ingest import Event

#: The forest's size: small enough to score a purchase in ~0.1 ms, in plain Python.
TAKEOVER_PARAMS = RiskModelParams(name="takeover-v1", trees=60, max_depth=8, min_frauds=20)
#: The share of escalated suspicions that must be takeovers. On the tuning streams the
#: out-of-stream recall hardly moves from 0.90 (0.9985) to 0.98 (0.9923), so the threshold
#: errs towards precision, which falls first on streams unlike the tuning ones.
TAKEOVER_PRECISION = 0.98


class _Recorder:
    """A scorer that keeps each row it is asked about and escalates nothing."""

    version = "recording"
    threshold = 1.0

    def __init__(self) -> None:
        self.rows: list[tuple[float, ...]] = []

    def score_one(self, row: Sequence[float]) -> float:
        self.rows.append(tuple(row))
        return 0.0


@dataclass(frozen=True)
class SuspectedPurchases:
    """One stream's purchases from suspected origins: features, labels and suspicions."""

    rows: np.ndarray  # one row of TAKEOVER_FEATURES per purchase
    takeover: np.ndarray  # True: labelled account_takeover
    suspicions: list[tuple[str, str]]  # (user, the event that opened the suspicion)


def suspected_purchases(
    events: Iterable[Event], labels: Mapping[str, str], params: RiskParams | None = None
) -> SuspectedPurchases:
    """The purchases the rules find from a suspected origin in ``events`` (see the module)."""
    recorder = _Recorder()
    takeover: list[bool] = []
    suspicions: list[tuple[str, str]] = []
    for event, state, _ in fold_risk(events, params or RiskParams(), recorder):
        if len(recorder.rows) > len(takeover):
            assert state.suspect is not None
            takeover.append(labels.get(event.event_id) == "account_takeover")
            suspicions.append((event.user_id, state.suspect.event_id))
    rows = np.array(recorder.rows, dtype=np.float64).reshape(-1, len(TAKEOVER_FEATURES))
    return SuspectedPurchases(rows, np.array(takeover, dtype=bool), suspicions)


class ThresholdChoice(msgspec.Struct, frozen=True):
    """How the threshold was chosen: out-of-stream scores, at the suspicions' level."""

    threshold: float
    precision: float  # of the suspicions escalated at the threshold
    recall: float  # of the suspicions with a takeover purchase
    suspicions: int
    takeovers: int


def train_takeover(
    streams: Sequence[SuspectedPurchases],
    precision: float = TAKEOVER_PRECISION,
    params: RiskModelParams = TAKEOVER_PARAMS,
    trained_ms: int | None = None,
) -> tuple[RiskModel, ThresholdChoice]:
    """The takeover score fit on every stream, alerting at the threshold chosen on
    leave-one-stream-out scores (see the module); its version names the day it was trained
    (``trained_ms``, default now)."""
    if len(streams) < 2:
        raise ValueError("need at least two streams: the threshold is chosen on held-out ones")
    scores: list[np.ndarray] = []
    for held in range(len(streams)):
        others = [s for n, s in enumerate(streams) if n != held]
        scores.append(_fit(others, params).score(streams[held].rows))
    choice = choose_threshold(streams, scores, precision)
    model = _fit(streams, params, round(time.time() * 1000) if trained_ms is None else trained_ms)
    return msgspec.structs.replace(model, threshold=choice.threshold), choice


def _fit(
    streams: Sequence[SuspectedPurchases], params: RiskModelParams, trained_ms: int = 0
) -> RiskModel:
    rows = np.vstack([s.rows for s in streams])
    labels = np.concatenate([s.takeover for s in streams]).astype(int)
    if labels.sum() < params.min_frauds:
        raise ValueError(f"{labels.sum()} takeover purchases, fewer than {params.min_frauds}")
    return train_risk_model(rows, labels, trained_ms, params, TAKEOVER_FEATURES)


def choose_threshold(
    streams: Sequence[SuspectedPurchases], scores: Sequence[np.ndarray], precision: float
) -> ThresholdChoice:
    """The lowest score at which the suspicions escalated (any purchase at or above it) are
    takeovers at least ``precision`` of the time.

    >>> one = SuspectedPurchases(np.zeros((3, 1)), np.array([True, False, False]),
    ...                          [("u1", "e1"), ("u2", "e2"), ("u3", "e3")])
    >>> choose_threshold([one], [np.array([0.9, 0.6, 0.2])], 0.9).threshold
    0.9
    """
    best: dict[tuple[int, str, str], float] = {}  # per suspicion: its top score
    truth: dict[tuple[int, str, str], bool] = {}
    for n, (stream, score) in enumerate(zip(streams, scores, strict=True)):
        for suspicion, value, takeover in zip(
            stream.suspicions, score, stream.takeover, strict=True
        ):
            key = (n, *suspicion)
            best[key] = max(best.get(key, 0.0), float(value))
            truth[key] = truth.get(key, False) or bool(takeover)
    takeovers = sum(truth.values())
    chosen = ThresholdChoice(1.0, 1.0, 0.0, len(best), takeovers)
    right = wrong = 0
    ranked = sorted(best, key=lambda k: -best[k])
    for k, key in enumerate(ranked):
        right += truth[key]
        wrong += not truth[key]
        if k + 1 < len(ranked) and best[ranked[k + 1]] == best[key]:
            continue  # a threshold takes every suspicion of its score
        if right / (right + wrong) >= precision and best[key] > 0:
            chosen = ThresholdChoice(
                best[key], right / (right + wrong), right / max(takeovers, 1), len(best), takeovers
            )
    return chosen
