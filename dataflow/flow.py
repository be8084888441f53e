"""Wire the operators into the profilestream Bytewax dataflow.

    input (Kafka | JSONL) -> parse (a batch at a time) -> key by user
        -> profile (stateful, per user: wait for text vectors, apply, coalesce) -> deltas sink
                                         segment entries and exits   -> segments sink
                                         risk alerts                 -> alerts sink
    valid events with a category -> key by category
        -> demand (stateful, per category: hourly buckets, online forecast) -> demand sink
    parse rejects, duplicates and source errors -> dead-letter sink

All logic lives in ``operators/``; this module connects steps, sources, sinks and metrics,
and adapts the per-user logic to Bytewax's :class:`~bytewax.operators.StatefulBatchLogic`:
its timers, end of input and snapshots. ``build_flow`` takes optional source, sinks, encoder
and clock so tests run the real flow with ``bytewax.testing``. ``flow_from_env`` is the entry
point for ``python -m bytewax.run dataflow.flow:flow_from_env`` on a cluster.

Time passing matters to segments (a user lapses 30 days after their last purchase) and to
demand (an hour closes): both read the process's :class:`~operators.event_clock.EventClock`,
which every parsed event moves, and set Bytewax timers from it, so quiet users and
categories change too.

Each user's state rests as MessagePack bytes between deltas (a few KB); it is decoded when
the user's first event of an emit interval arrives and encoded again when the delta goes
out, so a busy user pays for (de)serialisation once per delta, not once per event.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, TypeGuard, TypeVar, cast

import bytewax.operators as op
import msgspec
import numpy as np
from bytewax.connectors.files import FileSink
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from dataflow import metrics
from dataflow.config import Config, load_config
from dataflow.model_watch import ItemModelFeed, ModelWatcher
from dataflow.sinks import KafkaOutput, dead_letter_json, dead_letter_message
from dataflow.sources import JsonlSource, RawLine
from operators.batching import TextBatcher
from operators.coalesce import (
    PendingChanges,
    Published,
    decode_pending,
    emit,
    encode_pending,
    erase,
    expire,
    note,
    note_clock,
    published,
    settled,
)
from operators.deltas import ProfileDelta, delta_to_json
from operators.demand import (
    CategoryDemand,
    DemandParams,
    DemandReport,
    close_until,
    decode_demand,
    encode_demand,
    next_close_ms,
    observe,
)
from operators.embedding import Embedder, TextEncoder, embedding_text, typed_text
from operators.event_clock import EventClock
from operators.events import (
    DeadLetter,
    Event,
    RejectReason,
    beyond_dedupe_memory,
    duplicate_of,
    erased_user,
    parse_event,
)
from operators.item_model import load_item_model
from operators.item_vectors import ItemVectors, loader_for
from operators.nlp import SentimentScorer, read_text
from operators.privacy import pii_key, pseudonymise
from operators.profile import (
    DAY_MS,
    Outcome,
    ProfileParams,
    UserState,
    apply_event,
    decode_state,
    encode_state,
)
from operators.risk import Alert, load_risk_params
from operators.segments import SegmentBook, SegmentTransition, exit_all, load_segment_book
from operators.user_step import Applications, after_event, before_event
from operators.windows import parse_windows

Clock = Callable[[], int]
log = logging.getLogger(__name__)
T = TypeVar("T")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def shared_embedder(config: Config) -> Embedder:
    """One model per process, shared by its worker threads, loaded when a text first needs it."""
    return _embedder(
        config.model_dir,
        config.embed_model,
        config.device,
        config.embed_precision,
        config.embed_threads or None,
        config.embed_cache_size,
        config.embed_batch_size,
    )


@lru_cache(maxsize=4)
def _embedder(
    model_dir: Path | None,
    model: str,
    device: str | None,
    precision: str,
    threads: int | None,
    cache_size: int,
    batch_size: int,
) -> Embedder:
    return Embedder(
        model_dir,
        model=model,
        device=device,
        precision=precision,
        threads=threads,
        cache_size=cache_size,
        batch_size=batch_size,
        lazy=True,  # events without text need no model: start on them meanwhile
    )


def profile_params(config: Config, model_name: str) -> ProfileParams:
    return ProfileParams(
        interest_half_life_ms=round(config.interest_half_life_days * DAY_MS),
        affinity_half_life_ms=round(config.affinity_half_life_days * DAY_MS),
        max_seen_event_ids=config.max_seen_event_ids,
        max_keywords=config.max_keywords,
        full_every=config.full_every,
        model_version=f"{model_name}+profile-v1",
        windows=parse_windows(config.windows),
        allowed_lateness_ms=config.allowed_lateness_ms,
    )


@dataclass(frozen=True)
class _Context:
    """What every user's logic shares: the model, the batcher, the settings and the clock."""

    params: ProfileParams
    batcher: TextBatcher
    sentiment: SentimentScorer
    feed: ItemModelFeed | None
    items: ModelWatcher[ItemVectors] | None
    prompts: Mapping[str, str]
    clock: Clock
    emit_interval_ms: int
    keywords_per_text: int
    dim: int
    expire_after_ms: int
    erased_memory_ms: int
    settle_full_ms: int
    applications: Callable[[], Applications]
    event_clock: EventClock

    def vector_of(self, event: Event) -> tuple[np.ndarray | None, str | None]:
        """The event's vector if the catalog has it, else the text whose vector it needs;
        ``(None, None)`` when its type does not move the interest vector."""
        if not self.params.moves_interest(event):
            return None, None
        if self.items is not None and typed_text(event) is None:
            vectors = self.items.current()
            vector = vectors.get(event.item_id) if vectors is not None else None
            if vector is not None:
                return vector, None
        return None, embedding_text(event, self.prompts)


Output = ProfileDelta | DeadLetter | SegmentTransition | Alert
#: A user's snapshot, immutable as Bytewax requires: the state as of the last delta, the
#: state now and the pending changes (when changes are pending, all MessagePack bytes), the
#: events waiting for a text vector, the event time the segments must be checked again at
#: (0: never), the user's segments (so the segment-size gauges resume too), the event time
#: the user expires at (0: never), once erased, the newest event time of theirs that
#: re-sends must not pass (0: none), and the wall time a settling full delta is due (0: none).
UserSnapshot = tuple[
    bytes | None, bytes | None, bytes | None, list[Event], int, tuple[str, ...], int, int, int
]


class _UserLogic(StatefulBatchLogic[Event, Output, UserSnapshot]):
    """One user's events in order: wait for vectors, apply, and send a delta when due."""

    __slots__ = (
        "before",
        "context",
        "due",
        "emitted",
        "erased",
        "expires",
        "members",
        "pending",
        "registered",
        "settle_at",
        "state",
        "waiting",
    )

    def __init__(self, context: _Context, resume: UserSnapshot | None) -> None:
        # Snapshots of older releases have fewer parts: resume those too.
        (emitted, current, pending, waiting, due, members, expires, erased, settle_at) = (
            _resume_parts(resume)
        )
        self.context = context
        self.settle_at = settle_at  # wall time a settling full delta is due (0: none)
        self.due = due  # event time of the next segment check (0: none)
        self.members = members
        self.expires = expires  # event time the user expires at (0: never)
        self.erased = erased  # newest event time of an erased user: older re-sends are refused
        for segment in members:
            metrics.SEGMENT_MEMBERS.labels(segment).inc()
        self.emitted = emitted  # the state as of the last delta, as bytes
        self.state: UserState | None = None if current is None else decode_state(current)
        self.pending = None if pending is None else decode_pending(pending)
        self.waiting: list[Event] | None = list(waiting) or None  # None saves a list a user
        self.before: Published | None = None  # what the last delta published, while pending
        self.registered = 0  # waiting events, from the first, whose texts joined a batch

    def on_batch(self, values: list[Event]) -> tuple[list[Output], bool]:
        if self.waiting is None:
            self.waiting = values  # a fresh list of Bytewax's: ours to keep
        else:
            self.waiting.extend(values)
        return self._advance(), self._finished()

    def on_notify(self) -> tuple[list[Output], bool]:
        now = self.context.clock()
        if self.waiting:
            self.context.batcher.flush_due(now)
        out = self._advance()
        # Timers go by the watermark (the clock less the allowed lateness): an event within
        # the lateness that arrives after the check is then still applied before it, as in
        # a replay, so memberships and versions do not depend on when timers fired.
        watermark = self.context.event_clock.now_ms() - self.context.params.allowed_lateness_ms
        if self.due and not self.waiting and self.due <= watermark:
            out += self._check_segments(watermark, now)
        if self.expires and not self.waiting and self.expires <= watermark:
            out += self._expire(now)
        if self.erased and self.erased + self.context.erased_memory_ms <= watermark:
            self.erased = 0  # re-sends this old are past the input's retention
        if self.pending is not None and now >= self.pending.due_ms:
            out.append(self._emit(now))
        elif self.settle_at and self.pending is None and now >= self.settle_at:
            out.append(self._settle(now))
        return out, self._finished()

    def on_eof(self) -> tuple[list[Output], bool]:
        out = self._advance()
        while self.waiting:  # the input is over: embed what waits now
            self.context.batcher.flush(self.context.clock())
            out += self._advance()
        end = self.context.event_clock.newest_ms()  # the input is over: all of it counts
        if self.due and self.due <= end:
            out += self._check_segments(end, self.context.clock())
        if self.expires and self.expires <= end:
            out += self._expire(self.context.clock())
        if self.pending is not None:
            out.append(self._emit(self.context.clock()))
        return out, self._finished()

    def notify_at(self) -> datetime | None:
        due = None
        if self.waiting:
            due = self.context.batcher.due_ms() or self.context.clock()
        if self.pending is not None:
            due = self.pending.due_ms if due is None else min(due, self.pending.due_ms)
        elif self.settle_at:
            due = self.settle_at if due is None else min(due, self.settle_at)
        clock_due = min(
            (
                t
                for t in (
                    self.due,
                    self.expires,
                    self.erased and self.erased + self.context.erased_memory_ms,
                )
                if t
            ),
            default=0,
        )
        if clock_due:
            check = self.context.event_clock.wall_due(
                clock_due + self.context.params.allowed_lateness_ms
            )
            due = check if due is None else min(due, check)
        return None if due is None else _as_datetime(due)

    def snapshot(self) -> UserSnapshot:
        waiting = list(self.waiting or ())
        clock = (self.due, self.members, self.expires, self.erased, self.settle_at)
        if self.pending is None or self.state is None:
            return self.emitted, None, None, waiting, *clock
        current, pending = encode_state(self.state), encode_pending(self.pending)
        return self.emitted, current, pending, waiting, *clock

    def _finished(self) -> bool:
        """Discard the logic once the user is erased and nothing of theirs is left (the
        marker that refuses their old re-sent events included)."""
        done = self.emitted is None and self.state is None and not self.waiting
        done = done and not self.erased
        return StatefulBatchLogic.DISCARD if done else StatefulBatchLogic.RETAIN

    def _advance(self) -> list[Output]:
        """Apply waiting events in order until one needs a vector that is not ready yet.

        The texts of the events queued behind that one are registered once, so they join
        the same batch: a user's burst of searches waits for one batch, not one per search.
        """
        waiting = self.waiting
        out: list[Output] = []
        if not waiting:
            return out
        context = self.context
        now = context.clock()
        applied = 0
        for event in waiting:
            vector, text = context.vector_of(event)
            if text is not None:
                vector = context.batcher.vector(text, now)
                if vector is None:
                    break
            applied += 1
            out += self._apply(event, vector, now)
        del waiting[:applied]
        self.registered = max(self.registered - applied, 1)
        if len(waiting) > self.registered:
            for later in waiting[self.registered :]:
                if (text := context.vector_of(later)[1]) is not None:
                    context.batcher.vector(text, now)
            self.registered = len(waiting)
            head = context.vector_of(waiting[0])[1]
            if head is None or context.batcher.vector(head, now) is not None:
                out += self._advance()  # the batch closed while the queue joined it
        if not self.waiting:
            self.waiting = None
        if self.pending is None:
            self.state = None  # nothing unsent: the state rests as bytes
        return out

    def _live(self) -> UserState | None:
        """The user's state as objects (decoded from its resting bytes if need be)."""
        state = self.state
        if state is None and self.emitted is not None:
            state = decode_state(self.emitted)
            if self.pending is None:
                self.before = published(state)
        return state

    def _apply(self, event: Event, vector: Any, now: int) -> list[Output]:
        context = self.context
        out: list[Output] = []
        if self.erased and event.ts_ms <= self.erased:
            out.append(erased_user(event))
            return out
        if self.expires:  # gone before this event came, by its time or the stream's
            watermark = context.event_clock.now_ms() - context.params.allowed_lateness_ms
            if self.expires <= max(event.ts_ms, watermark):
                out += self._expire(now)
                if event.ts_ms <= self.erased:
                    out.append(erased_user(event))
                    return out
        if self.due and self.due <= event.ts_ms:  # what the clock changed before this event
            out += self._check_segments(event.ts_ms, now, emit=False)
        state = self._live()
        feed = context.feed
        items = feed.model() if feed is not None else None
        if feed is not None and state is not None and context.params.moves_interest(event):
            feed.observe(state.profile.item_memory, event.item_id)
        signals = read_text(event, context.sentiment, context.keywords_per_text, vector)
        if signals is not None and signals.polarity is not None:
            metrics.OPINION_POLARITY.labels(event.type).observe(signals.polarity)
        dropped: set[tuple[str, str]] = set()
        new, outcome = apply_event(
            state,
            event,
            vector,
            context.params,
            dim=context.dim,
            signals=signals,
            items=items,
            dropped=dropped,
        )
        if outcome is Outcome.DUPLICATE or outcome is Outcome.UNVERIFIABLE:
            self.state = state if self.pending is not None else None
            refused = duplicate_of if outcome is Outcome.DUPLICATE else beyond_dedupe_memory
            out.append(refused(event))
            return out
        if outcome is Outcome.DELETED:
            tombstone = erase(state, self.pending, event, context.params, now)
            return out + self._forget(state, tombstone, event.event_id)
        assert new is not None
        if outcome is Outcome.LATE:
            metrics.LATE_EVENTS.inc()
        self.state = new
        if context.expire_after_ms:
            self.expires = new.profile.last_seen_ms + context.expire_after_ms
        alerts, transitions, self.due = after_event(new, event, context.applications())
        for alert in alerts:
            metrics.ALERTS.labels(alert.kind).inc()
        self._count(transitions)
        out += alerts
        out += transitions
        if self.pending is None:
            self.pending = PendingChanges(due_ms=now + context.emit_interval_ms)
        note(self.pending, event, in_windows=outcome is Outcome.APPLIED)
        self.pending.dropped |= dropped
        if context.emit_interval_ms == 0:
            out.append(self._emit(now))
        return out

    def _check_segments(self, until_ms: int, now: int, emit: bool = True) -> list[Output]:
        """Move the user's segments as the clock alone moves them, up to ``until_ms``."""
        state = self._live()
        if state is None:
            self.due = 0
            return []
        version = state.profile.version
        transitions, self.due = before_event(state, self.context.applications(), self.due, until_ms)
        self.state = state
        out: list[Output] = list(transitions)
        if state.profile.version == version:
            if self.pending is None:
                self.state = self.before = None  # nothing changed: back to resting bytes
            return out
        self._count(transitions)
        if self.pending is None:
            self.pending = PendingChanges(due_ms=now + self.context.emit_interval_ms)
        note_clock(self.pending, transitions[-1].event_time_ms if transitions else until_ms)
        if emit and self.context.emit_interval_ms == 0:
            out.append(self._emit(now))
        return out

    def _expire(self, now: int) -> list[Output]:
        """Erase a user inactive for the time to live."""
        state = self._live()
        self.expires = 0
        if state is None:
            return []
        metrics.EXPIRED_USERS.inc()
        return self._forget(state, expire(state, self.pending, self.context.params, now), None)

    def _forget(
        self, state: UserState | None, tombstone: ProfileDelta, event_id: str | None
    ) -> list[Output]:
        """Erase the user: segment exits, the tombstone, and a marker that refuses re-sends
        of their older events for ``erased_memory_days``."""
        out: list[Output] = []
        if state is not None:
            apps = self.context.applications()
            out += exit_all(state.profile, apps.segments, tombstone.event_time_ms, event_id)
            self.erased = max(state.profile.last_seen_ms, tombstone.event_time_ms)
        else:
            self.erased = tombstone.event_time_ms
        for segment in self.members:
            metrics.SEGMENT_TRANSITIONS.labels(segment, "exit").inc()
            metrics.SEGMENT_MEMBERS.labels(segment).dec()
        out.append(tombstone)
        self.emitted = self.state = self.pending = self.before = None
        self.due, self.members, self.expires, self.settle_at = 0, (), 0, 0
        return out

    def _count(self, transitions: list[SegmentTransition]) -> None:
        if not transitions:
            return
        members = set(self.members)
        for change in transitions:
            metrics.count_transition(change.segment, change.direction)
            if change.direction == "enter":
                members.add(change.segment)
            else:
                members.discard(change.segment)
        self.members = tuple(sorted(members))

    def _emit(self, now: int) -> ProfileDelta:
        assert self.state is not None and self.pending is not None
        params = self.context.params
        before = self.before
        if before is None and self.emitted is not None:  # resumed from a snapshot
            before = published(decode_state(self.emitted))
        delta = emit(self.state, before, self.pending, params, now)
        self.emitted = encode_state(self.state)
        self.state = self.pending = self.before = None
        settle = delta.kind == "patch" and self.context.settle_full_ms > 0
        self.settle_at = now + self.context.settle_full_ms if settle else 0
        return delta

    def _settle(self, now: int) -> ProfileDelta:
        """The quiet user's last published profile as a full delta (see ``settled``)."""
        assert self.emitted is not None
        self.settle_at = 0
        return settled(decode_state(self.emitted), self.context.params, now)


class _CategoryLogic(StatefulBatchLogic[Event, DemandReport, bytes]):
    """One category's demand: count events into buckets, close them as event time passes."""

    __slots__ = ("clock", "params", "state")

    def __init__(self, params: DemandParams, clock: EventClock, resume: bytes | None) -> None:
        self.params = params
        self.clock = clock
        self.state: CategoryDemand | None = None if resume is None else decode_demand(resume)

    def on_batch(self, values: list[Event]) -> tuple[list[DemandReport], bool]:
        state = self.state
        for event in values:
            state, late = observe(state, event, self.params)
            if late:
                metrics.DEMAND_LATE_EVENTS.inc()
        self.state = state
        return self._close(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[DemandReport], bool]:
        return self._close(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[DemandReport], bool]:
        return self._close(self.clock.newest_ms()), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = next_close_ms(self.state, self.params) if self.state is not None else None
        return None if due is None else _as_datetime(self.clock.wall_due(due))

    def snapshot(self) -> bytes:
        assert self.state is not None
        return encode_demand(self.state)

    def _close(self, watermark: int | None = None) -> list[DemandReport]:
        if self.state is None:
            return []
        now = self.clock.now_ms() if watermark is None else watermark
        reports = close_until(self.state, now, self.params)
        for report in reports:
            _export_demand(report)
        return reports


def _export_demand(report: DemandReport) -> None:
    """Show a closed bucket and the new forecast on the Grafana panel."""
    category = report.category
    for measure, value in report.actual.items():
        metrics.DEMAND_ACTUAL.labels(category, measure).set(value)
    if report.forecast:
        metrics.DEMAND_FORECAST.labels(category, "next").set(report.forecast[0])
        metrics.DEMAND_FORECAST.labels(category, "horizon").set(sum(report.forecast))
    if report.predicted is not None:
        metrics.DEMAND_ABS_ERROR.labels(category).inc(
            abs(report.predicted - report.actual["units"])
        )
        metrics.DEMAND_FORECASTS_SCORED.labels(category).inc()


def demand_params(config: Config) -> DemandParams:
    return DemandParams(
        bucket_ms=config.demand_bucket_ms,
        horizon=config.demand_horizon,
        allowed_lateness_ms=config.allowed_lateness_ms,
    )


def _demand(config: Config, events: Stream[Event], clock: EventClock) -> Stream[DemandReport]:
    """The second keyed stream: demand per category, with its forecast."""
    params = demand_params(config)
    with_category = op.filter("has_category", events, lambda e: e.category is not None)
    by_category = op.key_on("by_category", with_category, lambda e: cast(str, e.category))
    reports = op.stateful_batch(
        "demand", by_category, lambda resume: _CategoryLogic(params, clock, resume)
    )
    return op.key_rm("demand_reports", reports)


def _resume_parts(resume: tuple[Any, ...] | None) -> UserSnapshot:
    """A user's snapshot, also one of an older release (fewer parts: the new ones start empty)."""
    fresh: UserSnapshot = (None, None, None, [], 0, (), 0, 0, 0)
    if resume is None:
        return fresh
    return cast(UserSnapshot, (*resume, *fresh[len(resume) :]))


@lru_cache(maxsize=4096)
def _as_datetime(ms: int) -> datetime:
    """Due times repeat for every user of an input batch: build each datetime once."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _origin(message: KafkaSourceMessage) -> str:
    return f"{message.topic}/{message.partition}/{message.offset}"


def _parse_kafka(
    messages: list[KafkaSourceMessage], clock: Clock, key: bytes, events: EventClock
) -> list[Event | DeadLetter]:
    now = clock()
    parsed = []
    for message in messages:
        kind, stamp = message.timestamp or (0, 0)
        parsed.append(
            parse_event(
                message.value or b"",
                key=message.key,
                source=_origin(message),
                ingest_ms=stamp if kind and stamp > 0 else now,
            )
        )
    partition = f"{messages[0].topic}/{messages[0].partition}" if messages else ""
    return _prepared(parsed, key, events, partition)


def _parse_lines(
    lines: list[RawLine], clock: Clock, key: bytes, events: EventClock
) -> list[Event | DeadLetter]:
    now = clock()
    parsed = [parse_event(line, source=origin, ingest_ms=now) for line, origin in lines]
    return _prepared(parsed, key, events, "")


def _prepared(
    parsed: list[Event | DeadLetter], key: bytes, events: EventClock, partition: str
) -> list[Event | DeadLetter]:
    """Hide IPs and device ids before anything keeps them, move the event clock, and count
    valid events by type once per batch (a labelled counter per event is costly). A batch
    comes from one input partition."""
    out: list[Event | DeadLetter] = []
    types: Counter[str] = Counter()
    times = []
    for item in parsed:
        if isinstance(item, Event):
            types[item.type] += 1
            times.append((item.ts_ms, item.ingest_ms))
            item = pseudonymise(item, key)
        out.append(item)
    events.observe(times, partition)
    for event_type, n in types.items():
        metrics.EVENTS_IN.labels(event_type).inc(n)
    return out


def _source_error(error: Any) -> DeadLetter:
    message = error.msg
    return DeadLetter(
        RejectReason.SOURCE_ERROR.value,
        str(error.err),
        message.value or b"",
        message.key,
        _origin(message),
    )


def _is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
    return isinstance(item, Event)


def _delta_json(delta: ProfileDelta, clock: Clock) -> bytes:
    """Encode a delta for its sink and count it (kind, size, events, latency)."""
    data = delta_to_json(delta)
    metrics.DELTAS_OUT.labels(delta.kind).inc()
    metrics.DELTA_BYTES.observe(len(data))
    metrics.EVENTS_PER_DELTA.observe(len(delta.event_ids))
    if delta.ingest_ms:
        metrics.EVENT_TO_DELTA_SECONDS.observe(max(clock() - delta.ingest_ms, 0) / 1000)
    return data


def _inputs(
    flow: Dataflow, config: Config, source: Source | None, clock: Clock, events: EventClock
) -> tuple[Stream[Event | DeadLetter], list[Stream[DeadLetter]]]:
    if not config.pii_secret and config.sink == "kafka":
        log.warning(
            "PROFILESTREAM_PII_SECRET is not set: IPs and device ids are hashed with the public "
            "development secret, which does not protect them"
        )
    key = pii_key(config.pii_secret)
    if source is None and config.source == "kafka":
        kafka = kop.input(
            "kafka_in",
            flow,
            brokers=config.brokers.split(","),
            topics=[config.events_topic],
            tail=config.kafka_tail,
            add_config=config.kafka_properties(),
        )
        parsed = op.flat_map_batch(
            "parse", kafka.oks, lambda ms: _parse_kafka(ms, clock, key, events)
        )
        return parsed, [op.map("source_errors", kafka.errs, _source_error)]
    if source is None:
        if config.input_path is None:
            raise ValueError("source=file needs input_path")
        source = JsonlSource(config.input_path)
    lines = op.input("file_in", flow, source)
    return op.flat_map_batch(
        "parse", lines, lambda batch: _parse_lines(batch, clock, key, events)
    ), []


@dataclass(frozen=True)
class _Outputs:
    """The flow's output streams, each keyed as its topic is."""

    deltas: Stream[ProfileDelta]
    dead: Stream[DeadLetter]
    segments: Stream[SegmentTransition]
    alerts: Stream[Alert]
    demand: Stream[DemandReport]


_json = msgspec.json.Encoder()


Record = SegmentTransition | Alert | DemandReport


def _delta_messages(
    delta: ProfileDelta, topic: str, clock: Clock
) -> list[KafkaSinkMessage[bytes, bytes | None]]:
    """A delta's Kafka message; a tombstone is followed by a Kafka tombstone (same key, no
    value), so a compacted deltas topic drops every record of the erased user."""
    key = delta.user_id.encode()
    message: KafkaSinkMessage[bytes, bytes | None] = KafkaSinkMessage(
        key, _delta_json(delta, clock), topic=topic
    )
    if delta.kind != "tombstone":
        return [message]
    return [message, KafkaSinkMessage(key, None, topic=topic)]


def _record_json(record: Record) -> bytes:
    return _json.encode(record)


def _key_of(record: Record) -> str:
    return record.category if isinstance(record, DemandReport) else record.user_id


def _outputs(
    config: Config,
    outputs: _Outputs,
    clock: Clock,
    sinks: Mapping[str, Sink[Any]],
) -> None:
    records: dict[str, Stream[Record]] = {
        "segments": outputs.segments,
        "alerts": outputs.alerts,
        "demand": outputs.demand,
    }
    if not sinks and config.sink == "kafka":
        topics = {
            "segments": config.segments_topic,
            "alerts": config.alerts_topic,
            "demand": config.demand_topic,
        }
        deltas_topic = config.deltas_topic
        messages = [
            op.flat_map(
                "delta_msg", outputs.deltas, lambda d: _delta_messages(d, deltas_topic, clock)
            ),
            op.map("dlq_msg", outputs.dead, lambda d: dead_letter_message(d, config.dlq_topic)),
        ]
        for name, stream in records.items():
            topic = topics[name]
            messages.append(
                op.map(
                    f"{name}_msg",
                    stream,
                    lambda r, topic=topic: KafkaSinkMessage(  # type: ignore[misc]
                        _key_of(r).encode(), _record_json(r), topic=topic
                    ),
                )
            )
        output = KafkaOutput(config.brokers, config.kafka_properties())
        op.output("kafka_out", op.merge("to_kafka", *messages), output)
        return
    chosen = dict(sinks)
    if not chosen:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        for name, file_name in OUTPUT_FILES.items():
            (config.output_dir / file_name).touch()
            chosen[name] = FileSink(config.output_dir / file_name)
    if "deltas" in chosen:
        as_lines = op.map(
            "delta_json", outputs.deltas, lambda d: (d.user_id, _delta_json(d, clock).decode())
        )
        op.output("deltas_out", as_lines, chosen["deltas"])
    if "dead_letters" in chosen:
        dead = op.map("dlq_json", outputs.dead, lambda d: ("dlq", dead_letter_json(d)))
        op.output("dlq_out", dead, chosen["dead_letters"])
    for name, stream in records.items():
        if name in chosen:
            lines = op.map(f"{name}_json", stream, lambda r: (_key_of(r), _record_json(r).decode()))
            op.output(f"{name}_out", lines, chosen[name])


#: The files of ``sink=file``, by output name.
OUTPUT_FILES: Final = {
    "deltas": "deltas.jsonl",
    "dead_letters": "dead_letters.jsonl",
    "segments": "segments.jsonl",
    "alerts": "alerts.jsonl",
    "demand": "demand.jsonl",
}


def build_flow(
    config: Config,
    *,
    encoder: TextEncoder | None = None,
    sentiment: SentimentScorer | None = None,
    source: Source | None = None,
    sinks: Mapping[str, Sink[Any]] | None = None,
    clock: Clock = wall_clock_ms,
    event_clock: EventClock | None = None,
) -> Dataflow:
    """Build the dataflow for ``config``; the keyword arguments replace its parts in tests.

    With ``source``, items are ``(raw JSON line, origin)`` pairs, as :class:`JsonlSource`
    gives them; the origin is what makes a profile's incarnation unique. ``sinks`` maps
    output names (the keys of :data:`OUTPUT_FILES`) to sinks, which receive ``(key, JSON)``
    pairs: user id and delta, ``"dlq"`` and dead letter, user id and segment transition or
    alert, category and demand report; outputs left out of ``sinks`` are not written.
    ``clock`` is the wall clock, ``event_clock`` the stream's event-time clock.
    """
    model = encoder or shared_embedder(config)
    if sentiment is None:
        from operators.sentiment import load_sentiment_model

        sentiment = load_sentiment_model(config.sentiment_model)
    head = getattr(sentiment, "embedding", None)
    if head is not None and not head.reads(model.name):
        raise ValueError(
            f"the sentiment model's embedding head reads {head.model} vectors, but the flow "
            f"embeds with {model.name}: train it again with the flow's model"
        )
    context = _Context(
        params=profile_params(config, model.name),
        batcher=TextBatcher(
            model, config.embed_batch_size, config.embed_max_wait_ms, metrics.observe_batch
        ),
        sentiment=sentiment,
        feed=item_model_feed(config),
        items=item_vectors(config, model),
        prompts=model.prompts,
        clock=clock,
        emit_interval_ms=config.emit_interval_ms,
        keywords_per_text=config.keywords_per_text,
        dim=model.dim,
        expire_after_ms=round(config.expire_after_days * DAY_MS),
        erased_memory_ms=round(config.erased_memory_days * DAY_MS),
        settle_full_ms=round(config.settle_full_after_s * 1000),
        applications=applications(config, segment_book(config)),
        event_clock=event_clock or EventClock(),
    )
    flow = Dataflow("profilestream")
    parsed, source_errors = _inputs(flow, config, source, clock, context.event_clock)
    valid = op.branch("valid", parsed, _is_event)
    rejected = cast(Stream[DeadLetter], valid.falses)
    events = valid.trues
    by_user = op.key_on("by_user", events, lambda e: e.user_id)
    results = op.key_rm(
        "drop_key",
        op.stateful_batch("profile", by_user, lambda resume: _UserLogic(context, resume)),
    )
    deltas = op.filter_map("deltas", results, _only(ProfileDelta))
    duplicates = op.filter_map("duplicates", results, _only(DeadLetter))
    dead = op.merge("dead_letters", rejected, duplicates, *source_errors)
    dead = op.inspect("count_dead", dead, lambda _s, d: metrics.DEAD_LETTERS.labels(d.reason).inc())
    outputs = _Outputs(
        deltas=deltas,
        dead=dead,
        segments=op.filter_map("transitions", results, _only(SegmentTransition)),
        alerts=op.filter_map("alerts", results, _only(Alert)),
        demand=_demand(config, events, context.event_clock),
    )
    _outputs(config, outputs, clock, sinks or {})
    return flow


def _only(kind: type[T]) -> Callable[[object], T | None]:
    """Pick one kind of output out of a mixed stream (``filter_map``'s function)."""
    return lambda item: item if isinstance(item, kind) else None


def applications(config: Config, books: Callable[[], SegmentBook]) -> Callable[[], Applications]:
    """The applications' settings now (the segment book may be reloaded at any time)."""
    windows = parse_windows(config.windows)
    risk = load_risk_params(config.risk_rules_file)
    current = Applications(books(), windows, risk)

    def now() -> Applications:
        nonlocal current
        book = books()
        if book is not current.segments:
            current = Applications(book, windows, risk)
        return current

    return now


def segment_book(config: Config) -> Callable[[], SegmentBook]:
    """The segment definitions in use now: the shipped ones, or a watched file."""
    if config.segments_file is None:
        book = load_segment_book(None, windows=parse_windows(config.windows))
        metrics.SEGMENT_DEFINITIONS_INFO.labels(book.version).set(1)
        return lambda: book
    windows = parse_windows(config.windows)
    watcher = ModelWatcher(
        config.segments_file,
        config.model_poll_s,
        load=lambda path: load_segment_book(path, windows=windows),
        on_load=lambda _path: metrics.SEGMENT_DEFINITIONS_LOADS.labels("ok").inc(),
        on_error=lambda _path, _exc: metrics.SEGMENT_DEFINITIONS_LOADS.labels("error").inc(),
    )
    first = watcher.current()
    if first is None:
        raise ValueError(f"cannot load segment definitions from {config.segments_file}")
    shown = first

    def current() -> SegmentBook:
        nonlocal shown
        book = watcher.current() or shown
        if book is not shown:
            metrics.SEGMENT_DEFINITIONS_INFO.clear()
            metrics.SEGMENT_DEFINITIONS_INFO.labels(book.version).set(1)
            shown = book
        return book

    metrics.SEGMENT_DEFINITIONS_INFO.labels(first.version).set(1)
    return current


def item_model_feed(config: Config) -> ItemModelFeed | None:
    """The hot-reloaded item model of ``config.item_model_dir`` (``None`` when unset)."""
    if config.item_model_dir is None:
        return None
    watcher = ModelWatcher(
        config.item_model_dir,
        config.model_poll_s,
        load=load_item_model,
        on_load=metrics.ITEM_MODEL_VERSIONS.loaded,
        on_error=metrics.ITEM_MODEL_VERSIONS.failed,
    )
    return ItemModelFeed(watcher, on_weights=metrics.type_weights_changed)


def item_vectors(config: Config, model: TextEncoder) -> ModelWatcher[ItemVectors] | None:
    """The hot-reloaded catalog vectors of ``config.item_vectors_dir`` (``None`` when unset)."""
    if config.item_vectors_dir is None:
        return None
    return ModelWatcher(
        config.item_vectors_dir,
        config.model_poll_s,
        load=loader_for(model),
        on_load=metrics.ITEM_VECTOR_VERSIONS.loaded,
        on_error=metrics.ITEM_VECTOR_VERSIONS.failed,
    )


def flow_from_env() -> Dataflow:
    """The dataflow configured by ``PROFILESTREAM_*`` variables (for ``python -m bytewax.run``).

    ``bytewax.run`` itself takes the recovery directory, snapshot interval and worker count
    (``-r``, ``-s``, ``-w`` or ``BYTEWAX_*`` variables).
    """
    return build_flow(load_config())
