"""The learned score's item view: a chargeback counts on the day its purchase was made."""

from __future__ import annotations

from operators.apps.learned_risk import (
    ItemVerdict,
    PurchaseCheck,
    from_user_event,
    receive,
    settle_until,
)
from operators.apps.risk import RiskState
from operators.ingest import Event
from operators.ingest.units import DAY_MS

SETTLE_MS = 7 * DAY_MS
T0 = 20_000 * DAY_MS + 3_600_000


def chargeback(ts_ms: int, ref_ts_ms: int | None) -> Event:
    return Event(
        "cb1", "u1", ts_ms, "chargeback", item_id="t1", ref_event_id="p1", ref_ts_ms=ref_ts_ms
    )


def test_a_chargeback_names_its_purchase_time_or_is_placed_at_the_usual_delay() -> None:
    known = from_user_event(RiskState(), chargeback(T0 + 30 * DAY_MS, T0), SETTLE_MS)
    guessed = from_user_event(RiskState(), chargeback(T0 + 30 * DAY_MS, None), SETTLE_MS)
    assert known == ItemVerdict("t1", "p1", T0, T0 + 30 * DAY_MS)
    assert guessed == ItemVerdict("t1", "p1", T0 + 23 * DAY_MS, T0 + 30 * DAY_MS)


def test_a_late_chargeback_with_its_purchase_time_marks_that_days_sale_as_fraud() -> None:
    """Bought on day 0, charged back 30 days later: the item's day-0 sale is the fraud (the
    guess, 7 days before the chargeback, lands on a day without sales and counts nothing)."""
    frauds = {}
    for ref in (T0, None):
        state = receive(None, PurchaseCheck("p1", "u1", "t1", T0, 50.0, (0.0,) * 12))
        verdict = from_user_event(RiskState(), chargeback(T0 + 30 * DAY_MS, ref), SETTLE_MS)
        assert verdict is not None
        state = receive(state, verdict)
        state, _ = settle_until(state, T0 + 31 * DAY_MS, None, 7)
        assert state.history is not None
        frauds[ref] = sum(state.history.frauds)
    assert frauds == {T0: 1, None: 0}
