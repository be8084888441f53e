"""Per-user event-time windows: what a user did in the last hour, day and week.

Every profile keeps, for each configured span (default ``1h``, ``24h``, ``7d``), counts by
event type, spend and refunds, distinct items, categories and sessions, and the last few
items, valued as of the user's newest event time. Risk rules ("five logins in an hour") and
segments ("carted in the last day, bought nothing") read these.

Representation: a ring of buckets per span. A span of ``S`` with step ``s`` (``24h:1h``)
keeps at most ``S / s`` buckets, each summing the events whose time falls in it; the window
reported is the hopping window that ends with the bucket holding the newest event,
``[end - S, end)`` with ``end`` the end of that bucket. So a window covers between
``S - s`` and ``S`` of history before the newest event: the resolution is one step
(5 minutes, 1 hour and 6 hours by default) and nothing inside the window is estimated.
Distinct items, categories and sessions are exact too: each is a map from key to the newest
time it was seen, ordered by that time and capped at :data:`MAX_DISTINCT` keys (the oldest
go first), so a window's distinct count is exact up to the cap and reads as the cap beyond
it; the newest keys of the item map are the last items. Money is summed in integer
millionths, so totals add and subtract exactly.

Late data: an event more than ``allowed_lateness_ms`` older than the newest event already
seen is *late*. It still updates the long-term profile (the caller's job) but no window:
:func:`add` returns ``False`` and the caller counts it. An on-time event enters every window
whose range still contains it, also when it arrives out of order.

The functions follow Quix Streams' shape -- :func:`initialize`, :func:`add`,
:func:`result` and the pure :func:`window_range` -- and know nothing of Bytewax. Bytewax's
own windowing operators are not used: they keep one keyed state per window and key and
emit closed windows, while a profile needs all its spans together, as of its newest event,
inside the one per-user state that is snapshotted and coalesced with the rest of the profile.

>>> from operators.ingest import Event
>>> specs = parse_windows("1h:5m,24h:1h")
>>> state = initialize(specs)
>>> for i, kind in enumerate(["view", "view", "add_to_cart"]):
...     _ = add(state, specs, Event(f"e{i}", "u", 3_600_000 * i, kind, item_id=f"i{i}"), 600_000)
>>> windows = result(state, specs)
>>> windows["1h"]["counts"], windows["24h"]["counts"], windows["24h"]["items"]
({'add_to_cart': 1}, {'view': 2, 'add_to_cart': 1}, 3)
>>> add(state, specs, Event("late", "u", 0, "view", item_id="i9"), 600_000)
False
"""

from __future__ import annotations

import bisect
import itertools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from operators.ingest import Event

#: Spans reported by default, with their step (bucket width).
DEFAULT_WINDOWS: Final = "1h:5m,24h:1h,7d:6h"
#: Distinct items, categories and sessions remembered per user (the oldest go first).
MAX_DISTINCT: Final = 64
#: Items listed under ``last_items`` (the newest distinct ones).
LAST_ITEMS: Final = 5

_UNITS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def parse_duration_ms(text: str) -> int:
    """``"90s"``, ``"5m"``, ``"24h"``, ``"7d"`` in milliseconds.

    >>> parse_duration_ms("5m"), parse_duration_ms("7d")
    (300000, 604800000)
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) <= 0:
        raise ValueError(f"not a positive duration like 5m, 24h or 7d: {text!r}")
    return int(match[1]) * _UNITS[match[2]]


@dataclass(frozen=True)
class WindowSpec:
    """One window span and its bucket width; ``name`` is how deltas label it (``"24h"``)."""

    name: str
    span_ms: int
    step_ms: int
    buckets: int = field(init=False, repr=False)  # how many the ring holds at most

    def __post_init__(self) -> None:
        if self.span_ms % self.step_ms:
            raise ValueError(f"window {self.name}: the step must divide the span")
        object.__setattr__(self, "buckets", self.span_ms // self.step_ms)


def parse_windows(text: str) -> tuple[WindowSpec, ...]:
    """Parse ``"1h:5m,24h:1h,7d:6h"``: spans with their step (default: a twelfth of the span).

    >>> parse_windows("1h,7d:1d")
    (WindowSpec(name='1h', span_ms=3600000, step_ms=300000), \
WindowSpec(name='7d', span_ms=604800000, step_ms=86400000))
    """
    specs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        span, _, step = part.partition(":")
        span_ms = parse_duration_ms(span)
        step_ms = parse_duration_ms(step) if step else span_ms // 12
        specs.append(WindowSpec(span.strip(), span_ms, step_ms))
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"window spans repeat: {text!r}")
    return tuple(sorted(specs, key=lambda s: s.span_ms))


def window_range(latest_ms: int, spec: WindowSpec) -> tuple[int, int]:
    """The window ``[start, end)`` reported when the newest event is at ``latest_ms``.

    It ends with the bucket that holds ``latest_ms`` and spans ``spec.span_ms``.

    >>> window_range(3_650_000, WindowSpec("1h", 3_600_000, 300_000))
    (300000, 3900000)
    """
    end = (latest_ms // spec.step_ms + 1) * spec.step_ms
    return end - spec.span_ms, end


class Bucket(msgspec.Struct, array_like=True, gc=False):
    """What happened in one step of one span."""

    index: int  # event time // step
    counts: dict[str, int]
    spend: int = 0  # in millionths: integers add and subtract exactly, and pack small
    refunded: int = 0


class WindowState(msgspec.Struct, array_like=True):
    """A user's windows: one ring per span (oldest bucket first) with its running total
    (``index`` unused), and the distinct-key maps."""

    latest_ms: int
    rings: list[list[Bucket]]
    totals: list[Bucket]
    items: dict[str, int] = {}  # key -> newest on-time event time, oldest first
    categories: dict[str, int] = {}
    sessions: dict[str, int] = {}


def initialize(specs: tuple[WindowSpec, ...]) -> WindowState:
    """Empty windows for ``specs``."""
    return WindowState(0, [[] for _ in specs], [Bucket(0, {}) for _ in specs])


def is_late(ts_ms: int, latest_ms: int, allowed_lateness_ms: int) -> bool:
    """Whether an event at ``ts_ms`` is too late for windows whose newest event is ``latest_ms``.

    >>> is_late(1_000, 5_000, 4_000), is_late(999, 5_000, 4_000)
    (False, True)
    """
    return ts_ms < latest_ms - allowed_lateness_ms


def add(
    state: WindowState, specs: tuple[WindowSpec, ...], event: Event, allowed_lateness_ms: int
) -> bool:
    """Fold ``event`` into ``state`` (in place); ``False`` means it was late and left out."""
    if not specs:
        return True  # windows are switched off
    ts = event.ts_ms
    latest = state.latest_ms
    if latest and is_late(ts, latest, allowed_lateness_ms):
        return False
    kind = event.type
    amount = round(event.price * event.quantity * 1e6) if event.price is not None else 0
    for spec, ring, total in zip(specs, state.rings, state.totals, strict=True):
        index = ts // spec.step_ms
        newest = latest // spec.step_ms
        if index > newest or not ring:  # a new newest bucket: older ones may leave
            first = index - spec.buckets + 1
            stale = 0
            while stale < len(ring) and ring[stale].index < first:
                stale += 1
            if stale:
                for gone in ring[:stale]:
                    _subtract(total, gone)
                del ring[:stale]
                if not ring:  # start again from exact zeros: no rounding residue
                    total.counts, total.spend, total.refunded = {}, 0, 0
            bucket = Bucket(index, {})
            ring.append(bucket)
        elif index <= newest - spec.buckets:
            continue  # on time, but older than this span
        elif ring[-1].index == index:
            bucket = ring[-1]
        else:
            bucket = _bucket(ring, index)
        counts, totals = bucket.counts, total.counts
        counts[kind] = counts.get(kind, 0) + 1
        totals[kind] = totals.get(kind, 0) + 1
        if kind == "purchase":
            bucket.spend += amount
            total.spend += amount
        elif kind == "refund":
            bucket.refunded += amount
            total.refunded += amount
    if ts > latest:
        longest = specs[-1]
        if ts // longest.step_ms != latest // longest.step_ms:
            _forget_before(state, window_range(ts, longest)[0])
        state.latest_ms = ts
    if event.item_id is not None:
        _remember(state.items, event.item_id, ts)
    if event.category is not None:
        _remember(state.categories, event.category, ts)
    if event.session_id is not None:
        _remember(state.sessions, event.session_id, ts)
    return True


def _subtract(total: Bucket, gone: Bucket) -> None:
    """Take a bucket that left the window out of the span's running total."""
    counts = total.counts
    for kind, n in gone.counts.items():
        left = counts[kind] - n
        if left:
            counts[kind] = left
        else:
            del counts[kind]
    total.spend -= gone.spend
    total.refunded -= gone.refunded


def _forget_before(state: WindowState, horizon_ms: int) -> None:
    """Drop the distinct keys and last items no window can reach any more."""
    for seen in (state.items, state.categories, state.sessions):
        for key in [k for k, t in seen.items() if t < horizon_ms]:
            del seen[key]


def _bucket(ring: list[Bucket], index: int) -> Bucket:
    """The bucket ``index`` of a ring sorted by index, inserted if missing."""
    position = len(ring)
    while position and ring[position - 1].index > index:
        position -= 1
    if position and ring[position - 1].index == index:
        return ring[position - 1]
    bucket = Bucket(index, {})
    ring.insert(position, bucket)
    return bucket


def _remember(seen: dict[str, int], key: str, ts: int) -> None:
    """Note ``key`` at ``ts``; ``seen`` stays ordered oldest first, so eviction is O(1)."""
    known = seen.get(key)
    if known is not None:
        if ts <= known:
            return
        del seen[key]
    elif len(seen) >= MAX_DISTINCT:
        oldest = next(iter(seen))
        if seen[oldest] >= ts:
            return  # older than everything kept: it cannot change a capped count
        del seen[oldest]
    newest = next(reversed(seen), None)
    seen[key] = ts
    if newest is not None and seen[newest] > ts:  # out of order (rare): restore the order
        ordered = sorted(seen.items(), key=lambda kv: kv[1])
        seen.clear()
        seen.update(ordered)


def result(state: WindowState, specs: tuple[WindowSpec, ...]) -> dict[str, dict[str, Any]]:
    """Every span's aggregates as of the newest event, keyed by the span's name.

    Each holds ``from_ms`` (the window's start), ``counts`` by event type, ``spend`` and
    ``refunded`` (price x quantity), the numbers of distinct ``items``, ``categories`` and
    ``sessions``, and ``last_items`` (newest first).
    """
    starts = [window_range(state.latest_ms, spec)[0] for spec in specs]
    items = _count_since(state.items, starts)
    # The item map is ordered by when each item was last seen: its newest keys are the
    # last items, and the first ``items[i]`` of them fall in span i.
    last_items = list(itertools.islice(reversed(state.items), LAST_ITEMS))
    categories = _count_since(state.categories, starts)
    sessions = _count_since(state.sessions, starts)
    return {
        spec.name: {
            "from_ms": start,
            "counts": dict(total.counts),
            "spend": total.spend / 1e6,
            "refunded": total.refunded / 1e6,
            "items": items[i],
            "categories": categories[i],
            "sessions": sessions[i],
            "last_items": last_items[: items[i]],
        }
        for i, (spec, total, start) in enumerate(zip(specs, state.totals, starts, strict=True))
    }


def _count_since(seen: dict[str, int], starts: list[int]) -> list[int]:
    """How many keys were seen at or after each of ``starts`` (``seen`` is oldest first)."""
    times = list(seen.values())
    return [len(times) - bisect.bisect_left(times, start) for start in starts]


def span_index(specs: tuple[WindowSpec, ...], name: str) -> int:
    """The position of the span called ``name`` in ``specs`` (and of its ring in a state).

    >>> span_index(parse_windows("1h:5m,24h:1h"), "24h")
    1
    """
    for i, spec in enumerate(specs):
        if spec.name == name:
            return i
    raise ValueError(f"no window span {name!r} (spans: {', '.join(s.name for s in specs)})")


_INDEX: Final = operator.attrgetter("index")


def _inside(state: WindowState, spec: WindowSpec, ring: list[Bucket], as_of_ms: int) -> int:
    """Where the buckets inside the window reported as of ``as_of_ms`` start in ``ring``."""
    latest = state.latest_ms
    first = (as_of_ms if as_of_ms > latest else latest) // spec.step_ms - spec.buckets + 1
    if ring[0].index >= first:  # the usual case at event time: nothing has left yet
        return 0
    return bisect.bisect_left(ring, first, key=_INDEX)


def count_as_of(
    state: WindowState, specs: tuple[WindowSpec, ...], index: int, kind: str, as_of_ms: int
) -> int:
    """Events of type ``kind`` in span ``specs[index]`` as of ``as_of_ms``.

    The window is the hopping window :func:`result` reports, but ending with the bucket that
    holds ``as_of_ms`` rather than the newest event: buckets leave it as time passes without
    events (a quiet user's cart leaves the day). A time before the newest event reads as the
    newest event's time (windows never go back), so at event times this equals ``result``.

    >>> specs = parse_windows("1h:5m")
    >>> state = initialize(specs)
    >>> _ = add(state, specs, Event("e1", "u", 3_600_000, "add_to_cart", item_id="i"), 0)
    >>> [count_as_of(state, specs, 0, "add_to_cart", t) for t in (0, 7_199_999, 7_200_000)]
    [1, 1, 0]
    """
    ring = state.rings[index]
    if not ring:
        return 0
    start = _inside(state, specs[index], ring, as_of_ms)
    if start == 0:
        return state.totals[index].counts.get(kind, 0)
    if 2 * start < len(ring):  # fewer buckets have left than stayed: take those out
        n = state.totals[index].counts.get(kind, 0)
        for bucket in ring[:start]:
            n -= bucket.counts.get(kind, 0)
        return n
    return sum(bucket.counts.get(kind, 0) for bucket in ring[start:])


def spend_as_of(
    state: WindowState, specs: tuple[WindowSpec, ...], index: int, as_of_ms: int
) -> float:
    """Purchase spend (price x quantity) in span ``specs[index]`` as of ``as_of_ms``.

    The same window as :func:`count_as_of`; summed in integer millionths, like ``result``.
    """
    ring = state.rings[index]
    if not ring:
        return 0.0
    start = _inside(state, specs[index], ring, as_of_ms)
    micros = state.totals[index].spend
    if start == 0:
        return micros / 1e6
    if 2 * start < len(ring):
        for bucket in ring[:start]:
            micros -= bucket.spend
        return micros / 1e6
    return sum(bucket.spend for bucket in ring[start:]) / 1e6


def next_count_flip_ms(
    state: WindowState,
    specs: tuple[WindowSpec, ...],
    index: int,
    kind: str,
    as_of_ms: int,
    holds: Callable[[int], bool],
) -> int | None:
    """When, if no event comes, ``holds`` of the count of ``kind`` in span ``specs[index]``
    (:func:`count_as_of`) first changes as buckets leave it; ``None`` if it never does. A
    segment condition ``count >= 3`` asks only when it can stop holding, not when each
    event leaves, so the timers it sets fire when something changes. Always after
    ``as_of_ms``.

    >>> specs = parse_windows("1h:5m")
    >>> state = initialize(specs)
    >>> for i, ts in enumerate((3_650_000, 3_950_000)):
    ...     _ = add(state, specs, Event(f"e{i}", "u", ts, "add_to_cart", item_id="i"), 0)
    >>> next_count_flip_ms(state, specs, 0, "add_to_cart", 3_950_000, lambda n: n >= 1)
    7500000
    >>> next_count_flip_ms(state, specs, 0, "add_to_cart", 3_950_000, lambda n: n >= 2)
    7200000
    >>> next_count_flip_ms(state, specs, 0, "add_to_cart", 7_500_000, lambda n: n >= 1) is None
    True
    """
    return _next_flip(state, specs, index, as_of_ms, lambda b: b.counts.get(kind, 0), holds, 1)


def next_spend_flip_ms(
    state: WindowState,
    specs: tuple[WindowSpec, ...],
    index: int,
    as_of_ms: int,
    holds: Callable[[float], bool],
) -> int | None:
    """Like :func:`next_count_flip_ms`, for the purchase spend (:func:`spend_as_of`)."""
    return _next_flip(state, specs, index, as_of_ms, lambda b: b.spend, holds, 1_000_000)


def _next_flip(
    state: WindowState,
    specs: tuple[WindowSpec, ...],
    index: int,
    as_of_ms: int,
    amount: Callable[[Bucket], int],
    holds: Callable[[Any], bool],
    unit: int,
) -> int | None:
    """Walk the window's buckets oldest first, taking each one's ``amount`` out of the total
    (integers, as the buckets keep them: no rounding drift) until ``holds`` of the total
    (/ ``unit``) changes: that bucket's leaving time."""
    ring = state.rings[index]
    if not ring:
        return None
    spec = specs[index]
    start = _inside(state, spec, ring, as_of_ms)
    inside = ring[start:] if start else ring
    total = sum(amount(b) for b in inside) if start else amount(state.totals[index])
    now = holds(total / unit if unit != 1 else total)
    for bucket in inside:
        part = amount(bucket)
        if part:
            total -= part
            if holds(total / unit if unit != 1 else total) != now:
                return (bucket.index + spec.buckets) * spec.step_ms
    return None
