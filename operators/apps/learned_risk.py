"""The learned purchase score's path through the flow: the buyer's side, then the item's.

The user step knows the buyer; only a view across users sees that a terminal, merchant or
product is being defrauded. :func:`from_user_event` runs in the user step: for a priced
purchase it computes the buyer's features and returns a :class:`PurchaseCheck`; for a
``chargeback`` (a fraud verdict on one of the user's purchases, naming its item), an
:class:`ItemVerdict`. Both go to the item's
keyed step (one state per item), which holds them until the
watermark passes their event time, then takes them in event-time order
(:func:`settle_until`), so the same input gives the same scores in every run however the
users' outputs interleave: a verdict known at time *t* counts for purchases after *t*.

Each purchase gets a :class:`RiskScore`: the full feature vector (the feature log a model is
retrained from, see ``profilestream train-risk``), the score of the loaded
:class:`~operators.apps.risk_model.RiskModel` and its version; a score at or above the
model's threshold also raises an :class:`~operators.apps.risk.Alert` of kind
``learned_score``. Without a model the features are still logged, to train the first one.

>>> day = 86_400_000
>>> state = None
>>> state = receive(state, PurchaseCheck("p1", "u1", "t1", 10 * day, 30.0, (0.0,) * 13))
>>> state = receive(state, PurchaseCheck("p2", "u2", "t1", 12 * day, 40.0, (0.0,) * 13))
>>> state, out = settle_until(state, 11 * day, None, 7)
>>> [(s.event_id, s.features[13]) for s in out]  # item_n_1d: sales that day before it
[('p1', 0.0)]
>>> next_due_ms(state) == 12 * day
True
"""

from __future__ import annotations

from typing import Final

import msgspec

from operators.apps.risk import Alert, RiskState, alert_id
from operators.apps.risk_features import (
    ItemHistory,
    item_features,
    record_fraud,
    record_purchase,
    record_sale,
    user_features,
)
from operators.apps.risk_model import RiskModel
from operators.ingest import Event

LEARNED_KIND: Final = "learned_score"


class PurchaseCheck(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="p"):
    """A purchase on its way to its item's view, with the buyer's part of the features."""

    event_id: str
    user_id: str
    item_id: str
    ts_ms: int
    amount: float
    user_features: tuple[float, ...]


class ItemVerdict(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="v"):
    """A chargeback (known at ``ts_ms``) on the item's sale ``purchase_id`` of ``purchase_ms``."""

    item_id: str
    purchase_id: str
    purchase_ms: int
    ts_ms: int


class RiskScore(msgspec.Struct, frozen=True):
    """A purchase's features and score, as the ``risk-scores`` output carries them."""

    event_id: str
    user_id: str
    item_id: str
    event_time_ms: int
    score: float | None
    model_version: str | None
    features: tuple[float, ...]


class ItemRisk(msgspec.Struct, array_like=True):
    """An item's history and what waits for the watermark (in arrival order)."""

    history: ItemHistory | None = None
    waiting: list[PurchaseCheck | ItemVerdict] = msgspec.field(default_factory=list)


ItemOutput = RiskScore | Alert


def from_user_event(
    state: RiskState, event: Event, settle_ms: int
) -> PurchaseCheck | ItemVerdict | None:
    """What a user's event sends to its item's view (updating ``state`` in place).

    A chargeback counts for the item's sales of its purchase's time (``ref_ts``), or, when
    the sender did not say, of ``settle_ms`` (the usual verdict delay) before it. It needs no
    memory of the purchase, so a verdict read before its purchase (a labels file replayed
    beside the events) counts the same.
    """
    if event.type == "purchase" and event.item_id is not None and event.price is not None:
        amount = event.price * event.quantity
        check = PurchaseCheck(
            event.event_id,
            event.user_id,
            event.item_id,
            event.ts_ms,
            amount,
            user_features(state.spend, event.ts_ms, amount),
        )
        state.spend = record_purchase(state.spend, event.ts_ms, amount)
        return check
    if event.type == "chargeback" and event.item_id is not None and event.ref_event_id:
        bought_ms = event.ref_ts_ms if event.ref_ts_ms is not None else event.ts_ms - settle_ms
        return ItemVerdict(event.item_id, event.ref_event_id, bought_ms, event.ts_ms)
    return None


def receive(state: ItemRisk | None, record: PurchaseCheck | ItemVerdict) -> ItemRisk:
    """``state`` with ``record`` waiting for the watermark (in place)."""
    state = state if state is not None else ItemRisk()
    state.waiting.append(record)
    return state


def _order(record: PurchaseCheck | ItemVerdict) -> tuple[int, int, str]:
    # At the same millisecond a verdict counts first; ties between purchases by event id.
    if type(record) is ItemVerdict:
        return record.ts_ms, 0, record.purchase_id
    assert type(record) is PurchaseCheck
    return record.ts_ms, 1, record.event_id


def settle_until(
    state: ItemRisk, watermark_ms: int, model: RiskModel | None, settle_days: int
) -> tuple[ItemRisk, list[ItemOutput]]:
    """Take the records at or before ``watermark_ms`` in event-time order (in place)."""
    ready = sorted((r for r in state.waiting if r.ts_ms <= watermark_ms), key=_order)
    if not ready:
        return state, []
    state.waiting = [r for r in state.waiting if r.ts_ms > watermark_ms]
    history = state.history
    outputs: list[ItemOutput] = []
    for record in ready:
        if type(record) is ItemVerdict:
            history = record_fraud(history, record.purchase_ms)
            continue
        assert type(record) is PurchaseCheck
        features = record.user_features + item_features(history, record.ts_ms, settle_days)
        score = None if model is None else round(model.score_one(features), 6)
        version = None if model is None else model.version
        outputs.append(
            RiskScore(
                record.event_id,
                record.user_id,
                record.item_id,
                record.ts_ms,
                score,
                version,
                features,
            )
        )
        if model is not None and score is not None and score >= model.threshold:
            outputs.append(
                Alert(
                    alert_id(record.user_id, LEARNED_KIND, record.event_id),
                    record.user_id,
                    LEARNED_KIND,
                    score,
                    (record.event_id,),
                    record.ts_ms,
                    {"item_id": record.item_id, "amount": record.amount},
                    model.version,
                )
            )
        history = record_sale(history, record.ts_ms)
    state.history = history
    return state, outputs


def next_due_ms(state: ItemRisk | None) -> int | None:
    """The event time the watermark must pass for the next record to be taken."""
    if state is None or not state.waiting:
        return None
    return min(r.ts_ms for r in state.waiting)


def encode_item_risk(state: ItemRisk) -> bytes:
    return msgspec.msgpack.encode(state)


_decoder = msgspec.msgpack.Decoder(ItemRisk)


def decode_item_risk(data: bytes) -> ItemRisk:
    return _decoder.decode(data)
