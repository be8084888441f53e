"""What the learned risk score sees of a purchase: the buyer's and the item's recent history.

A purchase is described by :data:`FEATURES`, computed from two small, bounded histories kept
in event time:

- the buyer's :class:`SpendHistory`: per-day purchase counts and log-amount sums over the
  last ``HISTORY_DAYS`` days, and when they last bought;
- the item's :class:`ItemHistory` (a terminal, a merchant, a product): per-day sales and
  confirmed frauds among them. It is a view *across* users, kept by a second keyed step, so
  a compromised terminal shows even when every buyer at it behaves as usual.

Features are what the user and item looked like *before* the purchase; the purchase is
added afterwards (:func:`record_purchase`, :func:`record_sale`). Fraud counts include only
verdicts already received (:func:`record_fraud`), so a score never sees the future. All
functions are pure: they return new histories and never touch their inputs.

>>> day = 86_400_000
>>> spend = record_purchase(None, 10 * day, 20.0)
>>> spend = record_purchase(spend, 11 * day, 22.0)
>>> f = dict(zip(FEATURES, purchase_features(spend, None, 12 * day + 3_600_000, 110.0)))
>>> f["user_n_30d"], round(f["amount_vs_user"], 2), f["night"], f["item_n_30d"]
(2.0, 1.62, 1.0, 0.0)
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

from operators.ingest.units import DAY_MS, HOUR_MS

#: Days of per-day buckets a history keeps (the longest window below).
HISTORY_DAYS: Final = 60

#: The feature vector's names, in order: the buyer's part, then the item's.
FEATURES: Final = (
    "amount",
    "log_amount",
    "night",
    "weekend",
    "user_n_1d",
    "user_n_7d",
    "user_n_30d",
    "user_mean_log_7d",
    "user_mean_log_30d",
    "amount_vs_user",
    "amount_z_user",
    "days_since_last",
    # The item's part starts here.
    "item_n_1d",
    "item_n_7d",
    "item_n_30d",
    "item_settled_n_1d",
    "item_settled_n_7d",
    "item_settled_n_30d",
    "item_settled_risk_1d",
    "item_settled_risk_7d",
    "item_settled_risk_30d",
    "item_known_fraud_30d",
    "item_days_since_fraud",
    "item_fraud_day_share",
)
USER_FEATURES: Final = FEATURES[: FEATURES.index("item_n_1d")]
ITEM_FEATURES: Final = FEATURES[len(USER_FEATURES) :]


class SpendHistory(msgspec.Struct, array_like=True, gc=False):
    """A buyer's purchases per day (newest last).

    It holds no fraud verdicts: the user step takes a chargeback when it arrives, which a
    replay cannot order against the user's purchases; the item step orders both by event time.
    """

    days: list[int] = msgspec.field(default_factory=list)
    counts: list[int] = msgspec.field(default_factory=list)
    log_sums: list[float] = msgspec.field(default_factory=list)
    log_squares: list[float] = msgspec.field(default_factory=list)
    last_ts_ms: int = -1


class ItemHistory(msgspec.Struct, array_like=True, gc=False):
    """An item's sales per day (newest last) and how many of them are confirmed fraud."""

    days: list[int] = msgspec.field(default_factory=list)
    counts: list[int] = msgspec.field(default_factory=list)
    frauds: list[int] = msgspec.field(default_factory=list)


def _window(days: list[int], values: list[int] | list[float], today: int, span: int) -> float:
    """Sum of ``values`` whose day is within the ``span`` days ending ``today``."""
    total = 0.0
    for day, value in zip(reversed(days), reversed(values), strict=True):
        if day <= today - span:
            break
        if day <= today:
            total += value
    return total


def user_features(spend: SpendHistory | None, ts_ms: int, amount: float) -> tuple[float, ...]:
    """The buyer's part of :data:`FEATURES` (:data:`USER_FEATURES`), before the purchase."""
    spend = spend if spend is not None else SpendHistory()
    today = ts_ms // DAY_MS
    log_amount = math.log1p(max(amount, 0.0))
    hour = (ts_ms % DAY_MS) // HOUR_MS
    weekday = (today + 3) % 7  # 1970-01-01 was a Thursday; 5 and 6 are the weekend
    n_7 = _window(spend.days, spend.counts, today, 7)
    n_30 = _window(spend.days, spend.counts, today, 30)
    s_7 = _window(spend.days, spend.log_sums, today, 7)
    s_30 = _window(spend.days, spend.log_sums, today, 30)
    q_30 = _window(spend.days, spend.log_squares, today, 30)
    mean_30 = s_30 / n_30 if n_30 else 0.0
    # Few purchases say little about a spread: shrink it towards a wide prior (0.5 in logs).
    variance = (q_30 - n_30 * mean_30 * mean_30 + 0.25 * 3) / (n_30 + 3)
    vs_user = log_amount - mean_30 if n_30 else 0.0
    since = (ts_ms - spend.last_ts_ms) / DAY_MS if spend.last_ts_ms >= 0 else 60.0
    return (
        amount,
        log_amount,
        1.0 if hour < 6 else 0.0,
        1.0 if weekday >= 5 else 0.0,
        _window(spend.days, spend.counts, today, 1),
        n_7,
        n_30,
        s_7 / n_7 if n_7 else 0.0,
        mean_30,
        vs_user,
        vs_user / math.sqrt(max(variance, 1e-4)),
        min(since, 60.0),
    )


def item_features(item: ItemHistory | None, ts_ms: int, settle_days: int = 7) -> tuple[float, ...]:
    """The item's part of :data:`FEATURES` (:data:`ITEM_FEATURES`), before the sale.

    ``settle_days`` is how long verdicts usually take: the item's *settled* windows end that
    many days ago, where most of its frauds are known, so their fraud share is not diluted by
    sales too recent to have a verdict (the Handbook's "delay period").
    """
    item = item if item is not None else ItemHistory()
    today = ts_ms // DAY_MS
    settled = today - settle_days
    settled_n = [_window(item.days, item.counts, settled, span) for span in (1, 7, 30)]
    settled_f = [_window(item.days, item.frauds, settled, span) for span in (1, 7, 30)]
    # A compromised terminal's sales are all fraud while it lasts: on the days with a known
    # fraud, what share of the sales were, and how recent the latest such day is.
    fraud_sales = fraud_days_sales = 0
    latest_fraud_day = today - 60
    for day, count, frauds in zip(item.days, item.counts, item.frauds, strict=True):
        if frauds and today - 60 < day <= today:
            fraud_sales += frauds
            fraud_days_sales += count
            latest_fraud_day = max(latest_fraud_day, day)
    return (
        _window(item.days, item.counts, today, 1),
        _window(item.days, item.counts, today, 7),
        _window(item.days, item.counts, today, 30),
        *settled_n,
        *(f / n if n else 0.0 for f, n in zip(settled_f, settled_n, strict=True)),
        _window(item.days, item.frauds, today, 30),
        float(today - latest_fraud_day),
        fraud_sales / fraud_days_sales if fraud_days_sales else 0.0,
    )


def purchase_features(
    spend: SpendHistory | None,
    item: ItemHistory | None,
    ts_ms: int,
    amount: float,
    settle_days: int = 7,
) -> tuple[float, ...]:
    """The :data:`FEATURES` of a purchase of ``amount`` at ``ts_ms``, before it is recorded."""
    return user_features(spend, ts_ms, amount) + item_features(item, ts_ms, settle_days)


def _add(days: list[int], today: int) -> int:
    """Index of today's bucket in ``days`` once buckets older than the history are cut."""
    if not days or days[-1] < today:
        days.append(today)
        return -1
    # An out-of-order event lands in its own day's bucket when it still exists.
    for index in range(len(days) - 1, -1, -1):
        if days[index] == today:
            return index
        if days[index] < today:
            days.insert(index + 1, today)
            return index + 1
    days.insert(0, today)
    return 0


def _cut(count: int, days: list[int], today: int) -> int:
    """How many leading buckets fell out of the history window ending ``today``."""
    cut = 0
    while cut < count and days[cut] <= today - HISTORY_DAYS:
        cut += 1
    return cut


def record_purchase(spend: SpendHistory | None, ts_ms: int, amount: float) -> SpendHistory:
    """``spend`` with a purchase of ``amount`` at ``ts_ms``; buckets past the history dropped."""
    old = spend if spend is not None else SpendHistory()
    days, counts = list(old.days), list(old.counts)
    sums, squares = list(old.log_sums), list(old.log_squares)
    today = ts_ms // DAY_MS
    log_amount = math.log1p(max(amount, 0.0))
    index = _add(days, today)
    if len(days) > len(counts):  # a new bucket
        counts.insert(index if index >= 0 else len(counts), 0)
        sums.insert(index if index >= 0 else len(sums), 0.0)
        squares.insert(index if index >= 0 else len(squares), 0.0)
    counts[index] += 1
    sums[index] += log_amount
    squares[index] += log_amount * log_amount
    newest = days[-1]
    cut = _cut(len(days), days, newest)
    return SpendHistory(
        days[cut:],
        counts[cut:],
        sums[cut:],
        squares[cut:],
        max(old.last_ts_ms, ts_ms),
    )


def record_sale(item: ItemHistory | None, ts_ms: int) -> ItemHistory:
    """``item`` with one more sale at ``ts_ms``."""
    old = item if item is not None else ItemHistory()
    days, counts, frauds = list(old.days), list(old.counts), list(old.frauds)
    index = _add(days, ts_ms // DAY_MS)
    if len(days) > len(counts):
        counts.insert(index if index >= 0 else len(counts), 0)
        frauds.insert(index if index >= 0 else len(frauds), 0)
    counts[index] += 1
    cut = _cut(len(days), days, days[-1])
    return ItemHistory(days[cut:], counts[cut:], frauds[cut:])


def record_fraud(item: ItemHistory | None, event_ts_ms: int) -> ItemHistory | None:
    """``item`` with its sale at ``event_ts_ms`` confirmed fraud (unchanged once that day left)."""
    if item is None:
        return None
    day = event_ts_ms // DAY_MS
    if day not in item.days:
        return item
    index = item.days.index(day)
    frauds = list(item.frauds)
    frauds[index] += 1
    return ItemHistory(list(item.days), list(item.counts), frauds)
