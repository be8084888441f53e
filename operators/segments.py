"""Marketing segments and RFM scores: conditions on a profile, evaluated as of event time.

A segment is a named condition on a user's profile ("carted in the last day and bought
nothing"); the flow keeps each user's memberships in ``UserProfile.segments`` (name -> event
time entered) and sends an ``enter`` or ``exit`` :class:`SegmentTransition` whenever one
changes. Definitions live in a JSON file (the bundled default is
``operators/data/segments.json``), in the spirit of Apache Unomi's conditions::

    {"segments": {
       "lapsing": {"description": "bought before, nothing in 30 days",
                   "when": {"all": [{"field": "counts.purchase", "op": ">=", "value": 1},
                                    {"since": "last_purchase_ms", "op": ">=", "value": "30d"}]}}},
     "rfm": {"recency_days": [2, 4, 7, 10], "frequency": [1, 1, 1, 2],
             "monetary": [65.36, 136.84, 298.08, 879.32]}}

Conditions (every object has exactly one of the kinds below and only the keys listed):

* ``{"all": [c, ...]}``, ``{"any": [c, ...]}``, ``{"not": c}``.
* ``{"field": path, "op": op, "value": v}`` with ``op`` one of ``== != < <= > >=``, ``between``
  (``[lo, hi]``, inclusive) or ``in`` (a list). ``path`` is dotted over the published profile:
  a scalar (``spend``, ``refunded``, ``sentiment``, ``version``, ``first_seen_ms`` ...) or a map
  and one key (``counts.purchase``, ``category_affinity.Dresses``); a list of parts also works
  (for keys with dots). A missing key or ``None`` is false for every comparison, ``!=`` too.
* ``{"exists": path}``.
* ``{"top_category": "Dresses"}`` or a list: the category of largest ``category_affinity``
  (a category tied for the largest counts as top) is one of these.
* ``{"count": type, "window": span, "op": op, "value": n}``: events of ``type`` in the window
  ``span`` (one of the flow's window spans, e.g. ``24h``), and ``{"window_spend": span, "op":
  op, "value": x}``: purchase spend in it.
* ``{"since": timestamp_field, "op": op, "value": "30d"}``: time elapsed since a timestamp
  (``last_purchase_ms``, ``first_seen_ms``, ``last_seen_ms``); durations like ``90s``, ``5m``,
  ``12h``, ``30d`` or integer milliseconds.
* ``{"rfm_group": "champions"}`` or a list (needs the ``rfm`` cut points).

Timestamps that were never set (``last_purchase_ms == 0``) are missing, in comparisons,
``exists`` and ``since`` alike -- so a never-buyer is not "30 days since the last purchase",
and ``not`` inverts that as usual. Decayed weights (affinities) are compared as stored, as
of the profile's ``anchor_ms`` (see :mod:`operators.profile`); they only change with events.
The file is compiled once into closures (:func:`parse_segment_book`), and unknown keys,
kinds, fields, event types, groups and malformed values are a ``ValueError`` naming the
segment and the place (``segment 'x': when.all[1].op: ...``).

Time. Every evaluation takes ``now_ms``, an *event* time: the flow passes the user's event
time on events and a stream event-time clock for quiet users, never the wall clock, so a
replay makes the same transitions at the same times. It is clamped to the user's newest event
(``last_seen_ms``): memberships never go back in time. Window counts are valued as of
``now_ms`` (:func:`operators.windows.count_as_of`): a quiet user's cart leaves the 24h window
as time passes. :func:`next_check_ms` says when, without the user acting, a membership or the
RFM score could next change (a ``since`` crossing its duration, the oldest relevant bucket
leaving a window, the recency days crossing a cut); the flow evaluates exactly then.

RFM. Recency (whole days since the last purchase), frequency (``counts.purchase``) and
monetary value (``spend``, rounded to cents) are each scored 1-5 against four configured cut
points per dimension: the score is one plus the number of cuts the value exceeds, reversed
for recency (recent is 5). A value equal to a cut is in the band below it (``x <= cut``, as
in pandas' right-closed bins): fewer days, purchases or dollars. The score string
is ``f"{r}{f}{m}"``, ``""`` for a user who never bought. Groups come from the usual R
versus FM grid, with ``FM = ceil((F + M) / 2)``::

                 FM=1              FM=2                FM=3                FM=4       FM=5
    R=5  new_customers     potential_loyalist  potential_loyalist  champions  champions
    R=4  promising         potential_loyalist  potential_loyalist  loyal      loyal
    R=3  about_to_sleep    about_to_sleep      need_attention      loyal      loyal
    R=2  hibernating       hibernating         at_risk             at_risk    cannot_lose_them
    R=1  lost              hibernating         at_risk             at_risk    cannot_lose_them

and appear as segments named ``rfm:<group>``.

Why configured cut points, refreshed by a periodic batch job (:func:`rfm_cut_points`,
``profilestream rfm-cuts``), rather than quantiles kept by a streaming global sketch: a
campaign selects "champions" and must get the same people tomorrow, so scores should move
only when a customer does, not whenever other customers shift the quantiles; every worker
must score alike, while a sketch per worker sees only its own key range and would disagree
across workers (and a merged global one needs a shuffle and still lags); batch quantiles are
exact where a sketch is approximate; and a cut file is versioned (``definitions_version``),
so any score can be reproduced from the events and the file, which a sketch's drifting
internal state cannot offer.

>>> from operators.events import Event
>>> from operators.profile import ProfileParams, apply_event
>>> book = parse_segment_book('''{"segments": {"cart_abandoners": {
...     "description": "carted in the last day, bought nothing",
...     "when": {"all": [{"count": "add_to_cart", "window": "24h", "op": ">", "value": 0},
...                      {"count": "purchase", "window": "24h", "op": "==", "value": 0}]}}}}''')
>>> params, t0 = ProfileParams(), 1_717_200_000_000
>>> state, _ = apply_event(None, Event("e1", "u1", t0, "add_to_cart", item_id="i1"), None,
...                        params, dim=4)
>>> moves = update_memberships(state.profile, book, params.windows, t0, "e1")
>>> [(m.segment, m.direction, m.event_time_ms - t0, m.event_id) for m in moves]
[('cart_abandoners', 'enter', 0, 'e1')]
>>> later = next_check_ms(book, state.profile, params.windows, t0)
>>> later - t0  # the cart leaves the 24h window
86400000
>>> moves = update_memberships(state.profile, book, params.windows, later, None)
>>> [(m.segment, m.direction, m.event_time_ms - t0, m.event_id) for m in moves]
[('cart_abandoners', 'exit', 86400000, None)]
>>> next_check_ms(book, state.profile, params.windows, later) is None
True
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np

from operators.events import EVENT_TYPES
from operators.profile import UserProfile
from operators.windows import (
    WindowSpec,
    count_as_of,
    next_count_drop_ms,
    next_spend_drop_ms,
    parse_duration_ms,
    span_index,
    spend_as_of,
)

DAY_MS: Final = 86_400_000
#: Where the default definitions ship.
BUNDLED_SEGMENTS: Final = Path(__file__).parent / "data" / "segments.json"
#: RFM groups are published as segments named ``rfm:<group>``.
RFM_PREFIX: Final = "rfm:"

Specs = tuple[WindowSpec, ...]
#: A compiled condition: ``test(profile, now_ms, specs) -> bool``.
Test = Callable[[UserProfile, int, Specs], bool]
#: When a compiled condition could next change by time alone: ``(profile, now_ms, specs)``.
NextChange = Callable[[UserProfile, int, Specs], "int | None"]

# --- RFM -------------------------------------------------------------------------------------

RFM_GROUPS: Final = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cannot_lose_them",
    "hibernating",
    "lost",
)
# Rows R=1..5, columns FM=1..5: the grid drawn in the module docstring.
_GRID: Final = (
    ("lost", "hibernating", "at_risk", "at_risk", "cannot_lose_them"),
    ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose_them"),
    ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    ("promising", "potential_loyalist", "potential_loyalist", "loyal", "loyal"),
    ("new_customers", "potential_loyalist", "potential_loyalist", "champions", "champions"),
)
_GROUP_OF: Final[dict[str, str]] = {
    f"{r}{f}{m}": _GRID[r - 1][(f + m + 1) // 2 - 1]
    for r in range(1, 6)
    for f in range(1, 6)
    for m in range(1, 6)
}


@dataclass(frozen=True)
class RfmCuts:
    """Four non-decreasing cut points per RFM dimension (quintile boundaries, usually)."""

    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("recency_days", "frequency", "monetary"):
            cuts = getattr(self, name)
            if (
                len(cuts) != 4
                or not all(isinstance(c, int | float) and math.isfinite(c) for c in cuts)
                or any(b < a for a, b in itertools.pairwise(cuts))
                or cuts[0] < 0
            ):
                raise ValueError(f"rfm {name}: need 4 ascending numbers >= 0, got {list(cuts)}")


def rfm_score(recency_days: int, frequency: int, monetary: float, cuts: RfmCuts) -> str:
    """Score R, F and M 1-5 against ``cuts``; a value on a cut is in the band below it.

    >>> cuts = RfmCuts((2, 4, 7, 10), (1, 1, 1, 2), (65.0, 136.0, 298.0, 879.0))
    >>> rfm_score(2, 1, 65.0, cuts), rfm_score(3, 2, 65.004, cuts), rfm_score(11, 3, 900, cuts)
    ('511', '441', '155')
    """
    r = 5 - bisect.bisect_left(cuts.recency_days, recency_days)
    f = 1 + bisect.bisect_left(cuts.frequency, frequency)
    m = 1 + bisect.bisect_left(cuts.monetary, round(monetary, 2))
    return f"{r}{f}{m}"


def rfm_group(score: str) -> str | None:
    """The group of an RFM score (see the grid in the module docstring); None for ``""``.

    >>> rfm_group("555"), rfm_group("511"), rfm_group("512"), rfm_group("111"), rfm_group("")
    ('champions', 'new_customers', 'potential_loyalist', 'lost', None)
    """
    return _GROUP_OF.get(score)


def profile_rfm(profile: UserProfile, cuts: RfmCuts, now_ms: int) -> str:
    """The user's RFM score as of ``now_ms``; ``""`` for a user who never bought."""
    last = profile.last_purchase_ms
    if not last:
        return ""
    days = (now_ms - last) // DAY_MS if now_ms > last else 0
    return rfm_score(days, profile.counts.get("purchase", 0), profile.spend, cuts)


def _next_rfm_change_ms(profile: UserProfile, cuts: RfmCuts, now_ms: int) -> int | None:
    """When the recency score drops next: the whole days pass the next cut not yet exceeded."""
    last = profile.last_purchase_ms
    if not last:
        return None
    days = (now_ms - last) // DAY_MS
    i = bisect.bisect_left(cuts.recency_days, days)
    if i == len(cuts.recency_days):
        return None
    return last + (math.floor(cuts.recency_days[i]) + 1) * DAY_MS


def rfm_cut_points(
    recency_days: Sequence[float] | np.ndarray,
    frequencies: Sequence[float] | np.ndarray,
    monetary: Sequence[float] | np.ndarray,
) -> RfmCuts:
    """The batch job: quintile boundaries of each dimension over all customers who bought.

    Monetary values are rounded to cents first and every cut to 2 decimals, so the file
    holds exactly what scoring compares against.

    >>> rfm_cut_points([0, 1, 2, 3, 4], [1, 1, 1, 2, 5], [10, 20, 30, 40, 50])
    RfmCuts(recency_days=(0.8, 1.6, 2.4, 3.2), frequency=(1.0, 1.0, 1.4, 2.6), \
monetary=(18.0, 26.0, 34.0, 42.0))
    """
    columns = []
    for name, values in (
        ("recency_days", recency_days),
        ("frequency", frequencies),
        ("monetary", monetary),
    ):
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            raise ValueError(f"no {name} values: nobody has bought")
        if name == "monetary":
            array = np.round(array, 2)
        quintiles = np.quantile(array, [0.2, 0.4, 0.6, 0.8])
        columns.append(tuple(round(float(q), 2) for q in quintiles))
    return RfmCuts(*columns)


# --- conditions ------------------------------------------------------------------------------

_SCALARS: Final = frozenset(
    {
        "user_id",
        "version",
        "interest_weight",
        "sentiment",
        "sentiment_weight",
        "spend",
        "refunded",
        "anchor_ms",
        "first_seen_ms",
        "last_seen_ms",
        "last_purchase_ms",
    }
)
_TIMESTAMPS: Final = frozenset({"anchor_ms", "first_seen_ms", "last_seen_ms", "last_purchase_ms"})
_MAPS: Final = frozenset({"counts", "category_affinity", "brand_affinity", "keywords"})
_COUNTED: Final = tuple(t for t in EVENT_TYPES if t != "delete_user")
# The keys each kind of condition takes besides its own.
_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "all": (),
    "any": (),
    "not": (),
    "field": ("op", "value"),
    "exists": (),
    "top_category": (),
    "count": ("window", "op", "value"),
    "window_spend": ("op", "value"),
    "since": ("op", "value"),
    "rfm_group": (),
}
# ``x op value`` as ``flipped(value, x)``: a partial of a C function, the cheapest call.
_FLIPPED: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.gt,
    "<=": operator.ge,
    ">": operator.lt,
    ">=": operator.le,
}
_OPS: Final = (*_FLIPPED, "between", "in")
_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class _Compiled:
    test: Test
    next_change: NextChange | None = None  # None: time alone never changes it
    spans: frozenset[str] = frozenset()  # window spans it reads


class _Parser:
    """Compile one segment's condition; errors name the segment and the place."""

    def __init__(self, segment: str, cuts: RfmCuts | None) -> None:
        self.segment = segment
        self.cuts = cuts

    def error(self, where: str, problem: str) -> ValueError:
        return ValueError(f"segment {self.segment!r}: {where}: {problem}")

    def compile(self, node: Any, where: str) -> _Compiled:
        if not isinstance(node, dict):
            raise self.error(where, f"a condition is a JSON object, got {node!r}")
        kinds = [k for k in node if k in _KINDS]
        if len(kinds) != 1:
            raise self.error(
                where,
                f"a condition has exactly one of {', '.join(_KINDS)}; got keys {sorted(node)}",
            )
        kind = kinds[0]
        extra = _KINDS[kind]
        unknown = sorted(set(node) - {kind, *extra})
        if unknown:
            raise self.error(where, f"unknown key(s) {unknown} in a {kind!r} condition")
        missing = [k for k in extra if k not in node]
        if missing:
            raise self.error(where, f"a {kind!r} condition needs {missing}")
        compile_kind: Callable[[dict[str, Any], str], _Compiled] = getattr(self, f"_{kind}")
        return compile_kind(node, f"{where}.{kind}")

    # Boolean structure.

    def _all(self, node: dict[str, Any], where: str) -> _Compiled:
        return self._combine(node["all"], where, every=True)

    def _any(self, node: dict[str, Any], where: str) -> _Compiled:
        return self._combine(node["any"], where, every=False)

    def _combine(self, children: Any, where: str, *, every: bool) -> _Compiled:
        if not isinstance(children, list) or not children:
            raise self.error(where, f"needs a non-empty list of conditions, got {children!r}")
        parts = [self.compile(c, f"{where}[{i}]") for i, c in enumerate(children)]
        tests = tuple(p.test for p in parts)
        test: Test
        if len(tests) == 1:
            test = tests[0]
        elif len(tests) == 2:
            a, b = tests
            if every:
                test = lambda p, now, specs: a(p, now, specs) and b(p, now, specs)  # noqa: E731
            else:
                test = lambda p, now, specs: a(p, now, specs) or b(p, now, specs)  # noqa: E731
        elif every:  # a loop: three times as fast as all() over a generator

            def test(p: UserProfile, now: int, specs: Specs) -> bool:
                for t in tests:  # noqa: SIM110
                    if not t(p, now, specs):
                        return False
                return True

        else:

            def test(p: UserProfile, now: int, specs: Specs) -> bool:
                for t in tests:  # noqa: SIM110
                    if t(p, now, specs):
                        return True
                return False

        timed = tuple(p.next_change for p in parts if p.next_change is not None)
        return _Compiled(test, _earliest(timed), frozenset().union(*(p.spans for p in parts)))

    def _not(self, node: dict[str, Any], where: str) -> _Compiled:
        inner = self.compile(node["not"], where)
        test = inner.test
        return _Compiled(
            lambda p, now, specs: not test(p, now, specs), inner.next_change, inner.spans
        )

    # Fields.

    def _path(self, path: Any, where: str) -> tuple[str, str | None]:
        parts = path.split(".") if isinstance(path, str) else path
        if (
            not isinstance(parts, list)
            or not parts
            or not all(isinstance(s, str) and s for s in parts)
        ):
            raise self.error(where, f"a field path is a dotted string or a list, got {path!r}")
        root = parts[0]
        if root in _SCALARS and len(parts) == 1:
            return root, None
        if root in _MAPS and len(parts) == 2:
            return root, parts[1]
        if root in _MAPS:
            raise self.error(where, f"{root!r} is a map: name one key, like {root}.<key>")
        if root in _SCALARS:
            raise self.error(where, f"{root!r} is a number or a string: it has no keys")
        if root == "rfm":
            raise self.error(where, "test the RFM score with an 'rfm_group' condition")
        if root == "windows":
            raise self.error(where, "test windows with 'count' or 'window_spend' conditions")
        raise self.error(
            where,
            f"unknown field {root!r}; fields: {', '.join(sorted(_SCALARS | _MAPS))}",
        )

    def _field(self, node: dict[str, Any], where: str) -> _Compiled:
        get = _getter(*self._path(node["field"], where))
        compare, _ = self._comparison(node, where, self._plain)

        def test(p: UserProfile, now: int, specs: Specs) -> bool:
            x = get(p)
            if x is None:
                return False
            try:
                return compare(x)
            except TypeError:  # a string against a number, a map, ...: not comparable
                return False

        return _Compiled(test)

    def _exists(self, node: dict[str, Any], where: str) -> _Compiled:
        get = _getter(*self._path(node["exists"], where))
        return _Compiled(lambda p, now, specs: get(p) is not None)

    def _top_category(self, node: dict[str, Any], where: str) -> _Compiled:
        categories = frozenset(self._names(node["top_category"], where, "category"))

        def test(p: UserProfile, now: int, specs: Specs) -> bool:
            scores = p.category_affinity
            if not scores:
                return False
            top = max(scores.values())
            for category, score in scores.items():  # a few keys: cheaper than a generator
                if score == top and category in categories:
                    return True
            return False

        return _Compiled(test)

    def _rfm_group(self, node: dict[str, Any], where: str) -> _Compiled:
        cuts = self.cuts
        if cuts is None:
            raise self.error(where, "the file has no 'rfm' cut points to score with")
        groups = frozenset(self._names(node["rfm_group"], where, "group"))
        unknown = sorted(groups - set(RFM_GROUPS))
        if unknown:
            raise self.error(where, f"unknown RFM group(s) {unknown}; groups: {list(RFM_GROUPS)}")
        # Scored here from the cuts rather than read from ``profile.rfm``, so evaluation does
        # not depend on the order of updates. Time moves it through the recency score, which
        # next_check_ms always watches when there are cuts.
        return _Compiled(lambda p, now, specs: _GROUP_OF.get(profile_rfm(p, cuts, now)) in groups)

    # Time.

    def _since(self, node: dict[str, Any], where: str) -> _Compiled:
        root = node["since"]
        if root not in _TIMESTAMPS:
            raise self.error(
                where, f"'since' takes a timestamp field ({', '.join(sorted(_TIMESTAMPS))})"
            )
        compare, thresholds = self._comparison(node, where, self._duration)
        # The elapsed time crosses a threshold v at ts + v (>=, <) or ts + v + 1 (>, <=).
        offsets = sorted({t + d for t in thresholds for d in (0, 1)})
        stamp: Callable[[UserProfile], int] = operator.attrgetter(root)

        def test(p: UserProfile, now: int, specs: Specs) -> bool:
            ts = stamp(p)
            return bool(ts) and compare(now - ts)

        def next_change(p: UserProfile, now: int, specs: Specs) -> int | None:
            ts = stamp(p)
            if not ts:
                return None  # set only by an event
            i = bisect.bisect_right(offsets, now - ts)
            return ts + offsets[i] if i < len(offsets) else None

        return _Compiled(test, next_change)

    def _count(self, node: dict[str, Any], where: str) -> _Compiled:
        kind = node["count"]
        if kind not in _COUNTED:
            raise self.error(where, f"unknown event type {kind!r}; types: {list(_COUNTED)}")
        span = self._span(node["window"], f"{where}.window")
        index = _span_resolver(span, self.segment)
        compare, _ = self._comparison(node, where, self._number)

        def test(p: UserProfile, now: int, specs: Specs) -> bool:
            return compare(count_as_of(p.windows, specs, index(specs), kind, now))

        def next_change(p: UserProfile, now: int, specs: Specs) -> int | None:
            return next_count_drop_ms(p.windows, specs, index(specs), kind, now)

        return _Compiled(test, next_change, frozenset({span}))

    def _window_spend(self, node: dict[str, Any], where: str) -> _Compiled:
        span = self._span(node["window_spend"], where)
        index = _span_resolver(span, self.segment)
        compare, _ = self._comparison(node, where, self._number)

        def test(p: UserProfile, now: int, specs: Specs) -> bool:
            return compare(spend_as_of(p.windows, specs, index(specs), now))

        def next_change(p: UserProfile, now: int, specs: Specs) -> int | None:
            return next_spend_drop_ms(p.windows, specs, index(specs), now)

        return _Compiled(test, next_change, frozenset({span}))

    # Values.

    def _span(self, span: Any, where: str) -> str:
        if not isinstance(span, str):
            raise self.error(where, f"a window is a span name like '24h', got {span!r}")
        try:
            parse_duration_ms(span)
        except ValueError as exc:
            raise self.error(where, str(exc)) from None
        return span

    def _names(self, value: Any, where: str, what: str) -> tuple[str, ...]:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise self.error(where, f"needs a {what} name or a non-empty list of them")
        return tuple(names)

    def _duration(self, value: Any, where: str) -> int:
        if isinstance(value, str):
            try:
                return parse_duration_ms(value)
            except ValueError as exc:
                raise self.error(where, str(exc)) from None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise self.error(where, f"a duration is like '30d', '12h', '5m' or ms >= 0, got {value!r}")

    def _plain(self, value: Any, where: str) -> Any:
        # No published field is a boolean, and true == 1 in Python: booleans are refused.
        if isinstance(value, str) or _is_number(value):
            return value
        raise self.error(where, f"needs a number or a string, got {value!r}")

    def _number(self, value: Any, where: str) -> float:
        if _is_number(value):
            return value
        raise self.error(where, f"needs a number, got {value!r}")

    def _comparison(
        self, node: dict[str, Any], where: str, convert: Callable[[Any, str], Any]
    ) -> tuple[Callable[[Any], bool], list[Any]]:
        """``x -> x op value`` and the values it compares with (converted)."""
        op, value = node["op"], node["value"]
        if op not in _OPS:
            raise self.error(f"{where}.op", f"unknown op {op!r}; ops: {' '.join(_OPS)}")
        where = f"{where}.value"
        if op == "between":
            if not isinstance(value, list) or len(value) != 2:
                raise self.error(where, f"'between' needs [low, high], got {value!r}")
            low, high = (convert(v, where) for v in value)
            if not (_is_number(low) and _is_number(high)) or low > high:
                raise self.error(where, f"'between' needs numbers low <= high, got {value!r}")
            return (lambda x: low <= x <= high), [low, high]
        if op == "in":
            if not isinstance(value, list) or not value:
                raise self.error(where, f"'in' needs a non-empty list, got {value!r}")
            values = [convert(v, where) for v in value]
            return frozenset(values).__contains__, values
        converted = convert(value, where)
        if op not in ("==", "!=") and not _is_number(converted):
            raise self.error(where, f"{op!r} needs a number, got {value!r}")
        return partial(_FLIPPED[op], converted), [converted]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _getter(root: str, key: str | None) -> Callable[[UserProfile], Any]:
    """The value at a field path, ``None`` when missing (a never-set timestamp too)."""
    if key is None:
        if root in _TIMESTAMPS:
            return lambda p: getattr(p, root) or None
        return operator.attrgetter(root)

    def get(p: UserProfile) -> Any:
        values = getattr(p, root)
        return values.get(key) if type(values) is dict else None

    return get


def _span_resolver(span: str, segment: str) -> Callable[[Specs], int]:
    """``specs -> position of span``, remembered for the specs object last seen."""
    memo: list[tuple[Specs | None, int]] = [(None, 0)]

    def index(specs: Specs) -> int:
        seen, i = memo[0]
        if seen is not specs:
            try:
                i = span_index(specs, span)
            except ValueError as exc:
                raise ValueError(f"segment {segment!r}: {exc}") from None
            memo[0] = (specs, i)  # one assignment: safe with threads
        return i

    return index


def _earliest(functions: tuple[NextChange, ...]) -> NextChange | None:
    if not functions:
        return None
    if len(functions) == 1:
        return functions[0]

    def next_change(p: UserProfile, now: int, specs: Specs) -> int | None:
        best = None
        for function in functions:
            t = function(p, now, specs)
            if t is not None and (best is None or t < best):
                best = t
        return best

    return next_change


# --- the segment book ------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One compiled segment: ``when`` is the condition as written in the file."""

    name: str
    description: str
    when: Mapping[str, Any]
    test: Test = field(repr=False, compare=False)
    next_change: NextChange | None = field(repr=False, compare=False)
    spans: frozenset[str] = field(repr=False, compare=False, default=frozenset())


@dataclass(frozen=True)
class SegmentBook:
    """The segment definitions and RFM cut points the flow evaluates, and their version.

    ``version`` is a short hash of the file's bytes: it travels on every transition as
    ``definitions_version``, so a consumer knows which definitions made it.
    """

    version: str
    segments: tuple[Segment, ...]
    rfm: RfmCuts | None
    names: frozenset[str] = field(init=False, repr=False, compare=False)  # of the segments
    timed: tuple[NextChange, ...] = field(init=False, repr=False, compare=False)
    checks: tuple[tuple[str, Test], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(s.name for s in self.segments))
        timed = tuple(s.next_change for s in self.segments if s.next_change is not None)
        object.__setattr__(self, "timed", timed)
        object.__setattr__(self, "checks", tuple((s.name, s.test) for s in self.segments))

    def check_windows(self, specs: Specs) -> None:
        """Raise ``ValueError`` unless every window span a segment reads is among ``specs``."""
        have = {s.name for s in specs}
        for segment in self.segments:
            missing = sorted(segment.spans - have)
            if missing:
                raise ValueError(
                    f"segment {segment.name!r}: no window span {missing[0]!r} in the flow "
                    f"(spans: {', '.join(sorted(have))})"
                )


def parse_segment_book(text: bytes | str) -> SegmentBook:
    """Compile a segments file (JSON; see the module docstring for the format)."""
    data = text.encode() if isinstance(text, str) else text
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"segments file is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("segments file: the top level is a JSON object")
    unknown = sorted(set(raw) - {"description", "segments", "rfm"})
    if unknown:
        raise ValueError(f"segments file: unknown top-level key(s) {unknown}")
    cuts = _parse_rfm(raw.get("rfm"))
    definitions = raw.get("segments", {})
    if not isinstance(definitions, dict):
        raise ValueError("segments file: 'segments' maps a segment name to its definition")
    segments = []
    for name, definition in definitions.items():
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"segment {name!r}: a name is lower case letters, digits and _, at most 64"
            )
        if not isinstance(definition, dict):
            raise ValueError(f"segment {name!r}: a definition is an object with 'when'")
        unknown = sorted(set(definition) - {"description", "when"})
        if unknown:
            raise ValueError(f"segment {name!r}: unknown key(s) {unknown}")
        if "when" not in definition:
            raise ValueError(f"segment {name!r}: needs a 'when' condition")
        description = definition.get("description", "")
        if not isinstance(description, str):
            raise ValueError(f"segment {name!r}: description: needs a string")
        compiled = _Parser(name, cuts).compile(definition["when"], "when")
        segments.append(
            Segment(
                name,
                description,
                definition["when"],
                compiled.test,
                compiled.next_change,
                compiled.spans,
            )
        )
    version = hashlib.blake2b(data, digest_size=6).hexdigest()
    return SegmentBook(version, tuple(segments), cuts)


def _parse_rfm(raw: Any) -> RfmCuts | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("rfm: an object with recency_days, frequency and monetary cut points")
    dimensions = ("recency_days", "frequency", "monetary")
    unknown = sorted(set(raw) - {*dimensions, "source", "as_of_ms", "customers"})
    if unknown:
        raise ValueError(f"rfm: unknown key(s) {unknown}")
    cuts = []
    for name in dimensions:
        values = raw.get(name)
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise ValueError(f"rfm {name}: need 4 ascending numbers >= 0, got {values!r}")
        cuts.append(tuple(values))
    return RfmCuts(*cuts)


def load_segment_book(path: Path | None = None, *, windows: Specs | None = None) -> SegmentBook:
    """Load and compile a segments file; ``None`` loads the bundled defaults.

    With ``windows`` (the flow's window specs), also check that every span a segment reads
    is one of them, so a bad file fails at start-up rather than at the first event.

    >>> book = load_segment_book()
    >>> len(book.version), "cart_abandoners" in book.names, book.rfm is not None
    (12, True, True)
    """
    book = parse_segment_book((path or BUNDLED_SEGMENTS).read_bytes())
    if windows is not None:
        book.check_windows(windows)
    return book


# --- memberships -----------------------------------------------------------------------------


class SegmentTransition(msgspec.Struct, frozen=True):
    """A user entering or leaving a segment, at an event time.

    ``transition_id`` is a hash of the user (and profile incarnation), segment, direction,
    event time and profile version: a replay re-sends the same id, so consumers dedupe on
    it. ``event_id`` is the event that caused it, ``None`` when a timer did.
    """

    transition_id: str
    user_id: str
    segment: str
    direction: Literal["enter", "exit"]
    event_time_ms: int
    event_id: str | None
    profile_version: int
    definitions_version: str


def transition_id(profile: UserProfile, segment: str, direction: str, event_time_ms: int) -> str:
    """The deterministic id of a transition of ``profile`` (see :class:`SegmentTransition`)."""
    key = msgspec.json.encode(
        [profile.user_id, profile.incarnation, segment, direction, event_time_ms, profile.version]
    )
    return hashlib.blake2b(key, digest_size=12).hexdigest()


def _clamped(now_ms: int, profile: UserProfile) -> int:
    """``now_ms``, or the user's newest event time if later: memberships never go back."""
    latest = profile.last_seen_ms
    return now_ms if now_ms > latest else latest


def _transition(
    profile: UserProfile,
    segment: str,
    direction: Literal["enter", "exit"],
    now_ms: int,
    event_id: str | None,
    book: SegmentBook,
) -> SegmentTransition:
    return SegmentTransition(
        transition_id(profile, segment, direction, now_ms),
        profile.user_id,
        segment,
        direction,
        now_ms,
        event_id,
        profile.version,
        book.version,
    )


def evaluate(book: SegmentBook, profile: UserProfile, specs: Specs, now_ms: int) -> set[str]:
    """The segments ``profile`` belongs to as of ``now_ms``, ``rfm:<group>`` included (pure)."""
    now = _clamped(now_ms, profile)
    inside = {name for name, test in book.checks if test(profile, now, specs)}
    if book.rfm is not None:
        group = rfm_group(profile_rfm(profile, book.rfm, now))
        if group is not None:
            inside.add(RFM_PREFIX + group)
    return inside


def update_memberships(
    profile: UserProfile, book: SegmentBook, specs: Specs, now_ms: int, event_id: str | None
) -> list[SegmentTransition]:
    """Bring ``profile.segments`` and ``profile.rfm`` up to ``now_ms``; return what changed.

    Call it after every event of the user (``now_ms`` its event time, ``event_id`` its id)
    and when a timer set by :func:`next_check_ms` fires (``event_id=None``). ``now_ms`` is
    clamped to the user's newest event. Memberships of segments the book no longer defines
    are exited. Transitions come in the book's order, then exits of dropped segments and of
    the old RFM group, then the entry of the new one.
    """
    now = _clamped(now_ms, profile)
    members = profile.segments
    moves: list[SegmentTransition] = []
    for name, test in book.checks:
        if test(profile, now, specs):
            if name not in members:
                members[name] = now
                moves.append(_transition(profile, name, "enter", now, event_id, book))
        elif name in members:
            del members[name]
            moves.append(_transition(profile, name, "exit", now, event_id, book))
    score = "" if book.rfm is None else profile_rfm(profile, book.rfm, now)
    group = _GROUP_OF.get(score)
    rfm_name = None if group is None else RFM_PREFIX + group
    profile.rfm = score
    stale = [n for n in members if n != rfm_name and n not in book.names]
    for name in stale:  # dropped from the book, or the RFM group the user has left
        del members[name]
        moves.append(_transition(profile, name, "exit", now, event_id, book))
    if rfm_name is not None and rfm_name not in members:
        members[rfm_name] = now
        moves.append(_transition(profile, rfm_name, "enter", now, event_id, book))
    return moves


def exit_all(
    profile: UserProfile, book: SegmentBook, now_ms: int, event_id: str | None
) -> list[SegmentTransition]:
    """Leave every segment (the user asked to be deleted): call it before dropping the state."""
    now = _clamped(now_ms, profile)
    moves = [_transition(profile, n, "exit", now, event_id, book) for n in profile.segments]
    profile.segments = {}
    profile.rfm = ""
    return moves


def next_check_ms(book: SegmentBook, profile: UserProfile, specs: Specs, now_ms: int) -> int | None:
    """The earliest event time after ``now_ms`` when a membership or the RFM score could
    change without the user acting; ``None`` when only an event can change them.

    Conservative: at that time something *may* change (evaluate, then ask again), but
    nothing changes before it.
    """
    now = _clamped(now_ms, profile)
    best = None
    for next_change in book.timed:
        t = next_change(profile, now, specs)
        if t is not None and (best is None or t < best):
            best = t
    if book.rfm is not None:
        t = _next_rfm_change_ms(profile, book.rfm, now)
        if t is not None and (best is None or t < best):
            best = t
    return best


def catch_up(
    profile: UserProfile, book: SegmentBook, specs: Specs, due_ms: int, until_ms: int
) -> tuple[list[SegmentTransition], int]:
    """Run the checks that fell due up to ``until_ms`` (inclusive), in order, as timers.

    ``due_ms`` is the check :func:`next_check_ms` asked for (0: none). Returns the
    transitions, each at its own check's event time, and the next check (0: none), which is
    later than ``until_ms``: how a quiet user's memberships follow the stream's clock.

    A check that changes the profile (a membership or the RFM score) is a new version of it,
    as an event is: consumers that keep the newest version must not skip the change.
    """
    moves: list[SegmentTransition] = []
    due = due_ms
    while due and due <= until_ms:
        profile.version += 1  # before the transitions, which name the version they make
        score = profile.rfm
        changed = update_memberships(profile, book, specs, due, None)
        if not changed and profile.rfm == score:
            profile.version -= 1
        moves += changed
        due = next_check_ms(book, profile, specs, due) or 0
    return moves, due


def memberships_from_transitions(
    transitions: Iterable[SegmentTransition],
) -> dict[str, set[str]]:
    """Replay entries and exits, in the order given, into each user's current segments.

    Repeated transition ids (a replay's re-sends) are skipped; users left in no segment are
    left out, so the result compares with the profiles' non-empty ``segments``.
    """
    seen: set[str] = set()
    members: dict[str, set[str]] = {}
    for t in transitions:
        if t.transition_id in seen:
            continue
        seen.add(t.transition_id)
        inside = members.setdefault(t.user_id, set())
        if t.direction == "enter":
            inside.add(t.segment)
        else:
            inside.discard(t.segment)
    return {user: inside for user, inside in members.items() if inside}
