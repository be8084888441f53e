"""``profilestream rfm-cuts`` and ``segments-check``: RFM cut points, and segments checked offline.

profilestream rfm-cuts --cdnow --out segments.json
profilestream rfm-cuts --deltas out/deltas.jsonl --out segments.json
profilestream rfm-cuts --events events.jsonl --out segments.json
profilestream segments-check

``rfm-cuts`` is the periodic batch job behind the RFM scores (see :mod:`operators.apps.segments`
for why cut points are configured rather than streamed): it takes every customer who bought
-- from the profiles a delta file rebuilds, from an event log folded through the profile
step, or from the CDNOW log -- computes the quintile cut points of recency, frequency and
monetary value as of the newest event, and writes a segments file: the segments of
``--base`` (default: the bundled ones) with the new ``rfm`` block.

``segments-check`` folds the CDNOW log (:mod:`dataflow.eval.cdnow`) through the real
profile step and :func:`operators.apps.segments.update_memberships`, event by event as the flow
would, evaluates every user once more at the log's last event time (a timer), and compares
the streaming RFM scores with :func:`batch_rfm`, a pandas recomputation from the raw log
with the same cut points. It also checks that replaying the transitions gives the profiles'
memberships, and times the default segments on generated events.

Ties at cut points: the streaming spend is a float sum of ``price x quantity`` (with
``price = dollars / cds``) in event order, the batch one a pandas sum of the dollars, and the
two differ in the last bits. Both are rounded to cents before scoring and the cut points
are stored to the cent, so a customer exactly on a cut gets the same (lower) score in both.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from dataflow.eval.cdnow import Purchase, cdnow_events, read_cdnow
from operators.apps.segments import (
    BUNDLED_SEGMENTS,
    RfmCuts,
    SegmentBook,
    SegmentTransition,
    exit_all,
    memberships_from_transitions,
    next_check_ms,
    parse_segment_book,
    rfm_cut_points,
    rfm_group,
    update_memberships,
)
from operators.apps.segments.conditions import Specs, Test
from operators.ingest import Event, parse_event
from operators.ingest.units import DAY_MS
from operators.profile import ProfileParams, UserProfile, UserState, apply_event, materialize

#: Share of users whose streaming and batch RFM scores must agree.
TARGET_SHARE = 0.99
_COLUMNS = ["recency_days", "frequency", "monetary"]


# --- batch RFM -------------------------------------------------------------------------------


def cdnow_rfm_inputs(purchases: list[Purchase], as_of_ms: int) -> pd.DataFrame:
    """Recency (whole days), frequency (lines) and monetary (dollars) per ``cdnow-<id>``."""
    log = pd.DataFrame(
        {
            "user_id": ["cdnow-" + p.customer_id for p in purchases],
            "ts_ms": np.array([p.ts_ms for p in purchases], dtype=np.int64),
            "dollars": np.array([p.dollars for p in purchases], dtype=np.float64),
        }
    )
    per_user = log.groupby("user_id", sort=True).agg(
        last_ms=("ts_ms", "max"), frequency=("ts_ms", "size"), monetary=("dollars", "sum")
    )
    per_user["recency_days"] = (as_of_ms - per_user["last_ms"]) // DAY_MS
    return per_user[_COLUMNS]


def profile_rfm_inputs(profiles: Iterable[Mapping[str, Any]], as_of_ms: int) -> pd.DataFrame:
    """The same table from published profile fields, for users who bought (``user_id`` key)."""
    rows = [
        (
            p["user_id"],
            (as_of_ms - p["last_purchase_ms"]) // DAY_MS,
            p.get("counts", {}).get("purchase", 0),
            p.get("spend", 0.0),
        )
        for p in profiles
        if p.get("last_purchase_ms")
    ]
    table = pd.DataFrame(rows, columns=["user_id", *_COLUMNS]).set_index("user_id")
    return table.sort_index()


def cuts_from_inputs(inputs: pd.DataFrame) -> RfmCuts:
    """:func:`operators.apps.segments.rfm_cut_points` of an inputs table."""
    return rfm_cut_points(*(inputs[c].to_numpy() for c in _COLUMNS))


def score_inputs(inputs: pd.DataFrame, cuts: RfmCuts) -> dict[str, str]:
    """Vectorised RFM scores of an inputs table: one plus the cuts each value exceeds."""
    r = 5 - np.searchsorted(cuts.recency_days, inputs["recency_days"].to_numpy(), side="left")
    f = 1 + np.searchsorted(cuts.frequency, inputs["frequency"].to_numpy(), side="left")
    cents = inputs["monetary"].to_numpy().round(2)
    m = 1 + np.searchsorted(cuts.monetary, cents, side="left")
    scores = pd.Series(r.astype(str)) + pd.Series(f.astype(str)) + pd.Series(m.astype(str))
    return dict(zip(inputs.index, scores, strict=True))


def batch_rfm(purchases: list[Purchase], cuts: RfmCuts, as_of_ms: int) -> dict[str, str]:
    """RFM scores of every CDNOW customer as of ``as_of_ms``, recomputed from the raw log.

    >>> log = [Purchase("1", 0, 1, 10.0), Purchase("1", DAY_MS, 2, 25.5),
    ...        Purchase("2", 0, 1, 5.0)]
    >>> cuts = RfmCuts((0, 1, 2, 3), (1, 1, 1, 1), (5, 10, 20, 30))
    >>> batch_rfm(log, cuts, 2 * DAY_MS)
    {'cdnow-1': '455', 'cdnow-2': '311'}
    """
    return score_inputs(cdnow_rfm_inputs(purchases, as_of_ms), cuts)


def compare_rfm(streaming: Mapping[str, str], batch: Mapping[str, str]) -> float:
    """Share of users (of either side) whose two scores are equal; 1.0 when both are empty.

    >>> compare_rfm({"a": "555", "b": "111"}, {"a": "555", "b": "112", "c": "345"})
    0.3333333333333333
    """
    users = streaming.keys() | batch.keys()
    if not users:
        return 1.0
    return sum(streaming.get(u) == batch.get(u) for u in users) / len(users)


@dataclass(frozen=True)
class RfmComparison:
    """Streaming against batch RFM scores: overall, per dimension and per group."""

    users: int
    share_equal: float
    share_by_dimension: dict[str, float]
    groups: list[tuple[str, int, int, int]]  # group, streaming users, batch users, in both
    mismatches: list[tuple[str, str | None, str | None]]  # the first few (user, stream, batch)

    def lines(self) -> list[str]:
        dims = "  ".join(f"{k} {v:.4f}" for k, v in self.share_by_dimension.items())
        out = [
            f"users {self.users}, RFM scores equal: {self.share_equal:.4f} "
            f"(target >= {TARGET_SHARE}); by dimension: {dims}",
            f"{'group':<20}{'streaming':>10}{'batch':>10}{'both':>10}",
        ]
        out += [f"{g:<20}{s:>10}{b:>10}{both:>10}" for g, s, b, both in self.groups]
        out += [f"  differs: {u} streaming {s} batch {b}" for u, s, b in self.mismatches]
        return out


def rfm_table(streaming: Mapping[str, str], batch: Mapping[str, str]) -> RfmComparison:
    """Compare two score maps (user -> ``"543"``) in detail."""
    users = sorted(streaming.keys() | batch.keys())
    by_dimension = {}
    for position, name in enumerate("RFM"):
        same = sum(
            (streaming.get(u) or "???")[position] == (batch.get(u) or "!!!")[position]
            for u in users
        )
        by_dimension[name] = same / len(users) if users else 1.0
    stream_groups = Counter(rfm_group(s) for s in streaming.values())
    batch_groups = Counter(rfm_group(s) for s in batch.values())
    both = Counter(rfm_group(streaming[u]) for u in users if streaming.get(u) == batch.get(u))
    names = sorted(stream_groups.keys() | batch_groups.keys(), key=lambda g: -batch_groups[g])
    groups = [(str(g), stream_groups[g], batch_groups[g], both[g]) for g in names]
    mismatches = [
        (u, streaming.get(u), batch.get(u)) for u in users if streaming.get(u) != batch.get(u)
    ]
    return RfmComparison(
        len(users), compare_rfm(streaming, batch), by_dimension, groups, mismatches[:10]
    )


def check_streaming_rfm(
    streaming: Mapping[str, str],
    *,
    cuts: RfmCuts | None = None,
    purchases: list[Purchase] | None = None,
    as_of_ms: int | None = None,
    out: Callable[[str], Any] | None = print,
) -> RfmComparison:
    """Compare streaming RFM scores of the CDNOW replay with the batch recomputation.

    ``streaming`` maps ``cdnow-<id>`` to the score the flow published, as of ``as_of_ms``
    (default: the log's last day, when a flow that ran to the end of the log has scored every
    user). ``cuts`` must be the ones the flow used; the default is what ``rfm-cuts --cdnow``
    writes. Prints the table unless ``out`` is None.
    """
    log = purchases if purchases is not None else read_cdnow()
    as_of = as_of_ms if as_of_ms is not None else max(p.ts_ms for p in log)
    inputs = cdnow_rfm_inputs(log, as_of)
    comparison = rfm_table(streaming, score_inputs(inputs, cuts or cuts_from_inputs(inputs)))
    if out is not None:
        for line in comparison.lines():
            out(line)
    return comparison


# --- streaming, offline ----------------------------------------------------------------------


@dataclass
class Fold:
    """Users' states after folding events, and every segment transition on the way."""

    states: dict[str, UserState] = field(default_factory=dict)
    transitions: list[SegmentTransition] = field(default_factory=list)
    events: int = 0
    last_ms: int = 0


def fold_events(
    events: Iterable[Event], book: SegmentBook | None, params: ProfileParams, dim: int = 4
) -> Fold:
    """What the flow does per user, without the flow: the profile step (no vectors), then the
    memberships at the event's time; a deleted user leaves every segment first."""
    fold = Fold()
    states = fold.states
    specs = params.windows
    for event in events:
        before = states.get(event.user_id)
        state, _ = apply_event(before, event, None, params, dim=dim)
        fold.events += 1
        fold.last_ms = max(fold.last_ms, event.ts_ms)
        if state is None:
            if before is not None:
                del states[event.user_id]
                if book is not None:
                    fold.transitions += exit_all(before.profile, book, event.ts_ms, event.event_id)
            continue
        states[event.user_id] = state
        if book is not None:
            fold.transitions += update_memberships(
                state.profile, book, specs, event.ts_ms, event.event_id
            )
    return fold


def timers_at(fold: Fold, book: SegmentBook, params: ProfileParams, now_ms: int) -> None:
    """Evaluate every user at ``now_ms`` as a timer would (no triggering event)."""
    for state in fold.states.values():
        fold.transitions += update_memberships(state.profile, book, params.windows, now_ms, None)


def read_events(path: Path) -> Iterable[Event]:
    """The valid events of a JSONL event log (the flow's input)."""
    with path.open("rb") as lines:
        for line in lines:
            event = parse_event(line.rstrip(b"\n"))
            if isinstance(event, Event):
                yield event


def cdnow_replay(purchases: list[Purchase]) -> Iterable[Event]:
    """The CDNOW replay as events. Built directly, not through ``parse_event``: its 1997-98
    times are before the year 2000 that the parser accepts."""
    for r in cdnow_events(purchases):
        yield Event(
            r["event_id"],
            r["user_id"],
            r["ts"],
            r["type"],
            item_id=r["item_id"],
            category=r["category"],
            price=r["price"],
            quantity=r["quantity"],
        )


def with_cuts(cuts: RfmCuts, base: Path | None = None) -> SegmentBook:
    """The segments of the file ``base`` (default: the bundled one) with other cut points."""
    raw = msgspec.json.decode((base or BUNDLED_SEGMENTS).read_bytes())
    raw["rfm"] = _rfm_block(cuts, {})
    return parse_segment_book(msgspec.json.encode(raw))


@dataclass(frozen=True)
class CdnowCheck:
    """The offline CDNOW check: scores compared, and memberships replayed from transitions."""

    comparison: RfmComparison
    transitions: int
    memberships_match: bool
    seconds: float


def cdnow_offline_check(
    purchases: list[Purchase] | None = None, out: Callable[[str], Any] | None = print
) -> CdnowCheck:
    """Fold the CDNOW replay through the profile step and the segments, score everyone at the
    last event time, and compare with :func:`batch_rfm` (cut points from the batch)."""
    started = time.perf_counter()
    log = purchases if purchases is not None else read_cdnow()
    as_of = max(p.ts_ms for p in log)
    cuts = cuts_from_inputs(cdnow_rfm_inputs(log, as_of))
    params = ProfileParams()
    book = with_cuts(cuts)
    fold = fold_events(cdnow_replay(log), book, params)
    timers_at(fold, book, params, as_of)
    streaming = {uid: s.profile.rfm for uid, s in fold.states.items() if s.profile.rfm}
    replayed = memberships_from_transitions(fold.transitions)
    held = {uid: set(s.profile.segments) for uid, s in fold.states.items() if s.profile.segments}
    comparison = check_streaming_rfm(streaming, cuts=cuts, purchases=log, as_of_ms=as_of, out=out)
    check = CdnowCheck(
        comparison, len(fold.transitions), replayed == held, time.perf_counter() - started
    )
    if out is not None:
        out(
            f"cut points {cuts}; {check.transitions} transitions replay to the profiles' "
            f"memberships: {check.memberships_match} ({check.seconds:.1f} s)"
        )
    return check


@dataclass(frozen=True)
class CdnowFlowCheck:
    """The CDNOW replay through the real dataflow, with its file sinks."""

    comparison: RfmComparison
    transitions: int
    memberships_match: bool
    events: int
    seconds: float


def cdnow_flow_check(
    out_dir: Path,
    *,
    encoder: Any = None,
    config: Any = None,
    out: Callable[[str], Any] | None = print,
) -> CdnowFlowCheck:
    """Replay CDNOW through the dataflow (file source, file sinks in ``out_dir``), rebuild the
    profiles from ``deltas.jsonl`` as a consumer does, and compare their RFM scores with the
    pandas recomputation; replay ``segments.jsonl`` into memberships and compare with the
    profiles'. Cut points are the batch's quintiles, written to a segments file the flow reads.

    ``encoder`` replaces the embedding model (tests); ``config`` is a base
    :class:`~dataflow.config.Config` whose paths are replaced.
    """
    from bytewax.testing import run_main

    from dataflow.config import Config
    from dataflow.eval.cdnow import write_cdnow_events
    from dataflow.flow import build_flow

    log = read_cdnow()
    as_of = max(p.ts_ms for p in log)
    cuts = cuts_from_inputs(cdnow_rfm_inputs(log, as_of))
    out_dir.mkdir(parents=True, exist_ok=True)
    segments_file = out_dir / "segments-cdnow.json"
    write_segments(segments_file, cuts, {"source": "quintiles of the CDNOW log"}, None)
    events_file = out_dir / "cdnow-events.jsonl"
    n_events = write_cdnow_events(events_file, log)
    base = config if config is not None else Config()
    flow_config = base.replace(
        source="file",
        sink="file",
        input_path=events_file,
        output_dir=out_dir,
        segments_file=segments_file,
    )
    started = time.perf_counter()
    run_main(build_flow(flow_config, encoder=encoder))
    seconds = time.perf_counter() - started
    profiles = materialize((out_dir / "deltas.jsonl").read_bytes().splitlines())
    streaming = {uid: str(p.fields["rfm"]) for uid, p in profiles.items() if p.fields.get("rfm")}
    decoder = msgspec.json.Decoder(SegmentTransition)
    transitions = [
        decoder.decode(line) for line in (out_dir / "segments.jsonl").read_bytes().splitlines()
    ]
    replayed = memberships_from_transitions(transitions)
    held = {uid: set(p.fields["segments"]) for uid, p in profiles.items() if p.fields["segments"]}
    comparison = check_streaming_rfm(streaming, cuts=cuts, purchases=log, as_of_ms=as_of, out=out)
    check = CdnowFlowCheck(comparison, len(transitions), replayed == held, n_events, seconds)
    if out is not None:
        out(
            f"dataflow: {n_events:,} events in {seconds:.1f} s; {len(transitions):,} segment "
            f"transitions replay to the profiles' memberships: {check.memberships_match}"
        )
    return check


# --- timing ----------------------------------------------------------------------------------


def time_segments(
    book: SegmentBook, n_events: int = 100_000, n_users: int = 5_000, seed: int = 0
) -> dict[str, float]:
    """Microseconds of :func:`update_memberships` and :func:`next_check_ms` on generated events.

    ``per_event``: right after each event's profile step, as the flow calls them (the profile
    is warm in the cache). ``timer_cold``: every user once at the end plus a day, the users'
    states scattered in memory as when timers fire. ``per_segment``: each segment's condition
    alone, per user, at that time.
    """
    from dataflow.sim import generate_events

    params = ProfileParams()
    specs = params.windows
    states: dict[str, UserState] = {}
    update_s = check_s = 0.0
    n = 0
    clock = time.perf_counter
    for generated in generate_events(n_events, n_users, seed=seed):
        event = parse_event(generated.line)
        if not isinstance(event, Event):
            continue
        state, _ = apply_event(states.get(event.user_id), event, None, params, dim=4)
        if state is None:
            states.pop(event.user_id, None)
            continue
        states[event.user_id] = state
        t0 = clock()
        update_memberships(state.profile, book, specs, event.ts_ms, event.event_id)
        t1 = clock()
        next_check_ms(book, state.profile, specs, event.ts_ms)
        t2 = clock()
        update_s += t1 - t0
        check_s += t2 - t1
        n += 1
    profiles = [s.profile for s in states.values()]
    later = max(p.last_seen_ms for p in profiles) + DAY_MS
    for p in profiles:
        update_memberships(p, book, specs, later, None)

    def best_of(function: Callable[[Any], Any]) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = clock()
            for p in profiles:
                function(p)
            best = min(best, clock() - t0)
        return best / len(profiles) * 1e6

    timings = {
        "per_event_update_us": update_s / n * 1e6,
        "per_event_next_check_us": check_s / n * 1e6,
        "timer_cold_update_us": best_of(lambda p: update_memberships(p, book, specs, later, None)),
        "timer_cold_next_check_us": best_of(lambda p: next_check_ms(book, p, specs, later)),
    }
    for segment in book.segments:
        timings[f"segment:{segment.name}_us"] = best_of(_at(segment.test, later, specs))
    return timings


def _at(test: Test, now_ms: int, specs: Specs) -> Callable[[UserProfile], bool]:
    return lambda p: test(p, now_ms, specs)


# --- the commands ----------------------------------------------------------------------------


def _rfm_block(cuts: RfmCuts, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "recency_days": list(cuts.recency_days),
        "frequency": list(cuts.frequency),
        "monetary": list(cuts.monetary),
        **meta,
    }


def write_segments(out: Path, cuts: RfmCuts, meta: dict[str, Any], base: Path | None) -> str:
    """Write ``base``'s segments with new cut points to ``out``; returns the new version."""
    raw = msgspec.json.decode((base or BUNDLED_SEGMENTS).read_bytes())
    raw["rfm"] = _rfm_block(cuts, meta)
    data = (json.dumps(raw, indent=2, ensure_ascii=False) + "\n").encode()
    book = parse_segment_book(data)  # never write a file the flow would refuse
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return book.version
