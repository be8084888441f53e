"""The segment condition language: JSON definitions compiled once into closures.

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
"""

from __future__ import annotations

import bisect
import hashlib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import msgspec

from operators.apps.segments.rfm import RFM_GROUPS, RfmCuts, profile_rfm, rfm_group
from operators.ingest import EVENT_TYPES
from operators.profile import UserProfile, WindowSpec, parse_duration_ms
from operators.profile.windows import (
    count_as_of,
    next_count_flip_ms,
    next_spend_flip_ms,
    span_index,
    spend_as_of,
)

#: What an RFM score reads (the last purchase, purchases, spend) changes only on a purchase.
RFM_READS: Final = frozenset({"purchase"})
#: Where the default definitions ship.
BUNDLED_SEGMENTS: Final = Path(__file__).resolve().parents[2] / "data" / "segments.json"
#: RFM groups are published as segments named ``rfm:<group>``.
RFM_PREFIX: Final = "rfm:"

Specs = tuple[WindowSpec, ...]
#: A compiled condition: ``test(profile, now_ms, specs) -> bool``.
Test = Callable[[UserProfile, int, Specs], bool]
#: When a compiled condition could next change by time alone: ``(profile, now_ms, specs)``.
NextChange = Callable[[UserProfile, int, Specs], "int | None"]

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


#: The event types that can change each field a condition reads (only these, besides time,
#: which the condition's ``next_change`` follows); a field not here changes with any event.
_CHANGED_BY: Final[dict[str, frozenset[str]]] = {
    "spend": frozenset({"purchase"}),
    "refunded": frozenset({"refund"}),
    "last_purchase_ms": frozenset({"purchase"}),
}
ANY_EVENT: Final = frozenset({"*"})


@dataclass(frozen=True, slots=True)
class _Compiled:
    test: Test
    next_change: NextChange | None = None  # None: time alone never changes it
    spans: frozenset[str] = frozenset()  # window spans it reads
    #: The event types that can change its value, or ANY_EVENT: an event of another type
    #: leaves it as it was (time aside), so it need not be tested again.
    reads: frozenset[str] = ANY_EVENT


def _union(parts: list[_Compiled]) -> frozenset[str]:
    reads = frozenset().union(*(p.reads for p in parts))
    return ANY_EVENT if "*" in reads else reads


def _field_reads(root: str, key: str | None) -> frozenset[str]:
    if root == "counts" and key is not None:
        return frozenset({key})
    return _CHANGED_BY.get(root, ANY_EVENT)


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

        spans = frozenset().union(*(p.spans for p in parts))
        return _Compiled(test, _combined_change(parts, every), spans, _union(parts))

    def _not(self, node: dict[str, Any], where: str) -> _Compiled:
        inner = self.compile(node["not"], where)
        test = inner.test
        return _Compiled(
            lambda p, now, specs: not test(p, now, specs),
            inner.next_change,
            inner.spans,
            inner.reads,
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
        path = self._path(node["field"], where)
        get = _getter(*path)
        compare, _ = self._comparison(node, where, self._plain)

        def test(p: UserProfile, now: int, specs: Specs) -> bool:
            x = get(p)
            if x is None:
                return False
            try:
                return compare(x)
            except TypeError:  # a string against a number, a map, ...: not comparable
                return False

        return _Compiled(test, reads=_field_reads(*path))

    def _exists(self, node: dict[str, Any], where: str) -> _Compiled:
        path = self._path(node["exists"], where)
        get = _getter(*path)
        return _Compiled(lambda p, now, specs: get(p) is not None, reads=_field_reads(*path))

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
        return _Compiled(
            lambda p, now, specs: rfm_group(profile_rfm(p, cuts, now)) in groups,
            reads=RFM_READS,
        )

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

        return _Compiled(test, next_change, reads=_field_reads(root, None))

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
            return next_count_flip_ms(p.windows, specs, index(specs), kind, now, compare)

        return _Compiled(test, next_change, frozenset({span}), frozenset({kind}))

    def _window_spend(self, node: dict[str, Any], where: str) -> _Compiled:
        span = self._span(node["window_spend"], where)
        index = _span_resolver(span, self.segment)
        compare, _ = self._comparison(node, where, self._number)

        def test(p: UserProfile, now: int, specs: Specs) -> bool:
            return compare(spend_as_of(p.windows, specs, index(specs), now))

        def next_change(p: UserProfile, now: int, specs: Specs) -> int | None:
            return next_spend_flip_ms(p.windows, specs, index(specs), now, compare)

        return _Compiled(test, next_change, frozenset({span}), frozenset({"purchase"}))

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


def _combined_change(parts: list[_Compiled], every: bool) -> NextChange | None:
    """When an ``all`` (``every``) or ``any`` of ``parts`` can next change.

    Only when a part does; and an ``all`` that fails now holds again only once every part
    that fails now has changed (an ``any`` that holds now, dually, fails only once every
    part that holds has): then the earliest time is the latest of those parts' next
    changes, and never if one of them never changes. Without that, a timer would fire each
    time any part changed -- a cart leaving the hour for a user who bought, say.
    """
    timed = tuple(p.next_change for p in parts if p.next_change is not None)
    earliest = _earliest(timed)
    if earliest is None:
        return None
    pairs = tuple((p.test, p.next_change) for p in parts)

    def next_change(p: UserProfile, now: int, specs: Specs) -> int | None:
        latest = None
        for test, change in pairs:
            if test(p, now, specs) != every:  # this part keeps the result as it is
                t = change(p, now, specs) if change is not None else None
                if t is None:
                    return None
                if latest is None or t > latest:
                    latest = t
        return earliest(p, now, specs) if latest is None else latest

    return next_change


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
    reads: frozenset[str] = field(repr=False, compare=False, default=ANY_EVENT)


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
    #: The checks an event of each type can change the outcome of (the book's order).
    checks_after: Mapping[str, tuple[tuple[str, Test], ...]] = field(
        init=False, repr=False, compare=False
    )
    #: Likewise, the ``timed`` functions whose answer an event of each type can move.
    timed_after: Mapping[str, tuple[NextChange, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(s.name for s in self.segments))
        timed = tuple(s.next_change for s in self.segments if s.next_change is not None)
        object.__setattr__(self, "timed", timed)
        object.__setattr__(self, "checks", tuple((s.name, s.test) for s in self.segments))
        moved = {
            kind: [s for s in self.segments if "*" in s.reads or kind in s.reads]
            for kind in EVENT_TYPES
        }
        checks_after = {kind: tuple((s.name, s.test) for s in moved[kind]) for kind in moved}
        object.__setattr__(self, "checks_after", checks_after)
        timed_after = {
            kind: tuple(s.next_change for s in moved[kind] if s.next_change is not None)
            for kind in moved
        }
        object.__setattr__(self, "timed_after", timed_after)

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
                compiled.reads,
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
