"""Wire the operators into the profilestream Bytewax dataflow.

    input (Kafka | JSONL): parse, stamp each event with its partition's watermark,
        and send a marker of the partition's event time behind every batch
        -> key by user (markers: one copy to every worker)
        -> profile (stateful, per user: wait for text vectors, apply, coalesce) -> deltas sink
                                         segment entries and exits   -> segments sink
                                         risk alerts                 -> alerts sink
           accepted events with a category, and each worker's watermark
        -> key by category (watermarks: to every worker)
        -> demand (stateful, per category: hourly buckets, online forecast) -> demand sink
    parse rejects, duplicates and source errors -> dead-letter sink

All logic lives in ``operators/``; this module connects steps, sources, sinks and metrics,
and adapts the per-user logic to Bytewax's :class:`~bytewax.operators.StatefulBatchLogic`:
its timers, end of input and snapshots. ``build_flow`` takes optional source, sinks, encoder
and clock so tests run the real flow with ``bytewax.testing``. ``flow_from_env`` is the entry
point for ``python -m bytewax.run dataflow.flow:flow_from_env`` on a cluster.

Time passing matters to segments (a user lapses 30 days after their last purchase), to
expiry and to demand (an hour closes). Both keyed steps act on watermarks that travel in
the stream with the events, are kept in Bytewax's snapshots and never follow the wall
clock (:mod:`dataflow.clock`), so the same input gives the same records in every run,
after any failure.

Each user's state rests as MessagePack bytes between deltas (a few KB); it is decoded when
the user's first event of an emit interval arrives and encoded again when the delta goes
out, so a busy user pays for (de)serialisation once per delta, not once per event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import bytewax.operators as op
import msgspec
import numpy as np
from bytewax.connectors.files import FileSink
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import DynamicSource, FixedPartitionedSource, Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from dataflow import metrics
from dataflow.clock import (
    ClockLogic,
    Cluster,
    ClusterSource,
    StepTime,
    WorkerTime,
    as_datetime,
    broadcast,
)
from dataflow.config import Config, load_config
from dataflow.model_watch import ItemModelFeed, ModelWatcher
from dataflow.sinks import KafkaOutput, dead_letter_json, dead_letter_message
from dataflow.sources import (
    DynamicEventSource,
    EventSource,
    JsonlSource,
    KafkaSource,
    Parse,
    PartitionTime,
    SourceItem,
)
from operators.apps import (
    DEMAND_TYPES,
    Alert,
    Applications,
    CategoryDemand,
    DemandParams,
    DemandReport,
    after_event,
    before_event,
    close_until,
    corrections,
    decode_demand,
    decode_record,
    encode_demand,
    load_risk_params,
    next_close_ms,
    observe,
)
from operators.apps.segments import SegmentBook, SegmentTransition, exit_all, load_segment_book
from operators.ingest import (
    DeadLetter,
    Event,
    EventTimeSpeed,
    Progress,
    WatermarkTable,
    beyond_dedupe_memory,
    duplicate_of,
    erased_user,
    parse_event,
    pii_key,
    pseudonymise,
)
from operators.profile import (
    DAY_MS,
    Outcome,
    PendingChanges,
    ProfileDelta,
    ProfileParams,
    Published,
    UserState,
    apply_event,
    decode_pending,
    delta_to_json,
    emit,
    encode_pending,
    encode_state,
    erase,
    expire,
    note,
    note_clock,
    parse_windows,
    published,
    settled,
)
from operators.recsys import ItemVectors, load_item_model, loader_for
from operators.text import SentimentScorer, read_text
from operators.text.embedding import Embedder, TextBatcher, TextEncoder, embedding_text, typed_text

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
    time: StepTime  # the profile step's event time on each worker

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


#: What the profile step emits: its outputs, the accepted events category demand counts,
#: and the watermark each worker forwards to the demand step.
Output = ProfileDelta | DeadLetter | SegmentTransition | Alert | Event | Progress
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
        "time",
        "waiting",
    )

    def __init__(self, context: _Context, resume: UserSnapshot | None) -> None:
        # Snapshots of older releases have fewer parts: resume those too.
        (emitted, current, pending, waiting, due, members, expires, erased, settle_at) = (
            _resume_parts(resume)
        )
        self.context = context
        self.time: WorkerTime = context.time.here()
        self.settle_at = settle_at  # wall time a settling full delta is due (0: none)
        self.due = due  # event time of the next segment check (0: none)
        self.members = members
        self.expires = expires  # event time the user expires at (0: never)
        self.erased = erased  # newest event time of an erased user: older re-sends are refused
        for segment in members:
            metrics.SEGMENT_MEMBERS.labels(segment).inc()
        self.emitted = emitted  # the state as of the last delta, as bytes
        self.state: UserState | None = None if current is None else decode_record(current)
        self.pending = None if pending is None else decode_pending(pending)
        # Events that waited for a vector at the snapshot may have gone out in a delta
        # after it, before a crash: they are read again, as far as deltas are concerned.
        self.waiting: list[Event] | None = [
            msgspec.structs.replace(e, replayed=True) for e in waiting
        ] or None  # None saves a list a user
        self.before: Published | None = None  # what the last delta published, while pending
        self.registered = 0  # waiting events, from the first, whose texts joined a batch
        self._note_waiting()

    def on_batch(self, values: list[Event]) -> tuple[list[Output], bool]:
        if self.waiting is None:
            self.waiting = values  # a fresh list of Bytewax's: ours to keep
            self.time.waiting[self] = min(e.ts_ms for e in values)
        else:
            self.waiting.extend(values)
            oldest = min(e.ts_ms for e in values)
            if oldest < self.time.waiting.get(self, oldest + 1):
                self.time.waiting[self] = oldest
        return self._advance(), self._finished()

    def on_notify(self) -> tuple[list[Output], bool]:
        now = self.context.clock()
        if self.waiting:
            self.context.batcher.flush_due(now)
        out = self._advance()
        # Timers go by the worker's watermark: every event older than it has been applied
        # (an event older still is late, and stamped so: see _apply), so what a check sees
        # does not depend on when the timer fired.
        watermark = self.time.table.watermark_ms
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
        end = self.time.table.end_ms()  # the input is over: all of it counts
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
            check = self.context.time.wall_due(self.time, clock_due)
            return check if due is None else min(as_datetime(due), check)
        return None if due is None else as_datetime(due)

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

    def _note_waiting(self) -> None:
        """Tell the worker the oldest event this user still has waiting for a vector: the
        watermark forwarded to category demand must not pass it. (Arrivals lower it in
        ``on_batch``; this works it out again when events have left the queue.)"""
        if self.waiting:
            self.time.waiting[self] = min(e.ts_ms for e in self.waiting)
        else:
            self.time.waiting.pop(self, None)

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
            self.time.waiting.pop(self, None)
        elif applied:
            self._note_waiting()
        if self.pending is None:
            self.state = None  # nothing unsent: the state rests as bytes
        return out

    def _live(self) -> UserState | None:
        """The user's state as objects (decoded from its resting bytes if need be)."""
        state = self.state
        if state is None and self.emitted is not None:
            state = decode_record(self.emitted)
            if self.pending is None:
                self.before = published(state)
        return state

    def _apply(self, event: Event, vector: Any, now: int) -> list[Output]:
        context = self.context
        out: list[Output] = []
        # What the clock did before this event: by its time, or, for a late event, by the
        # watermark its partition had when it was read, which no timer can have passed
        # before the event arrived. Either way the same in every run.
        horizon = max(event.ts_ms, event.watermark_ms)
        if self.erased and self.erased + context.erased_memory_ms <= event.watermark_ms:
            self.erased = 0  # re-sends this old are past the input's retention
        if self.erased and event.ts_ms <= self.erased:
            out.append(erased_user(event))
            return out
        if self.expires and self.expires <= horizon:  # gone before this event came
            out += self._expire(now)
            if event.ts_ms <= self.erased:
                out.append(erased_user(event))
                return out
        if self.due and self.due <= horizon:
            out += self._check_segments(horizon, now, emit=False)
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
        if event.replayed:
            # The run before a restart may have sent deltas of this event already, so a
            # consumer may be ahead of what this run has sent: only a full delta is sure
            # to bring it to this version (a patch lists what changed since its base, and a
            # field that changed and changed back would stay as that consumer had it).
            new.needs_full = True
        if context.expire_after_ms:
            self.expires = new.profile.last_seen_ms + context.expire_after_ms
        alerts, transitions, self.due = after_event(new, event, context.applications())
        for alert in alerts:
            metrics.ALERTS.labels(alert.kind).inc()
        self._count(transitions)
        out += alerts
        out += transitions
        if event.category is not None and event.type in DEMAND_TYPES:
            out.append(event)  # category demand counts what the profile accepted
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
            before = published(decode_record(self.emitted))
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
        return settled(decode_record(self.emitted), self.context.params, now)


class _CategoryLogic(StatefulBatchLogic[Event, DemandReport, bytes]):
    """One category's demand: count events into buckets, close them as the watermark passes.

    ``on_batch`` only counts (and re-states a closed bucket a late event joined); buckets
    close in timers and at the end of the input, when every event older than the
    watermark has been counted (see :mod:`dataflow.clock`).
    """

    __slots__ = ("params", "state", "step", "time")

    def __init__(self, params: DemandParams, step: StepTime, resume: bytes | None) -> None:
        self.params = params
        self.step = step
        self.time = step.here()
        self.state: CategoryDemand | None = None if resume is None else decode_demand(resume)

    def on_batch(self, values: list[Event]) -> tuple[list[DemandReport], bool]:
        state = self.state
        for event in values:
            state, late = observe(state, event, self.params)
            if late is not None:
                metrics.DEMAND_LATE_EVENTS.labels(late).inc()
        self.state = state
        assert state is not None
        return _exported(corrections(state)), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[DemandReport], bool]:
        return self._close(self.time.table.watermark_ms), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[DemandReport], bool]:
        return self._close(self.time.table.end_ms()), StatefulBatchLogic.RETAIN  # all is in

    def notify_at(self) -> datetime | None:
        due = next_close_ms(self.state, self.params) if self.state is not None else None
        return None if due is None else self.step.wall_due(self.time, due)

    def snapshot(self) -> bytes:
        assert self.state is not None
        return encode_demand(self.state)

    def _close(self, watermark: int) -> list[DemandReport]:
        if self.state is None:
            return []
        return _exported(close_until(self.state, watermark, self.params))


def _exported(reports: list[DemandReport]) -> list[DemandReport]:
    """Show closed buckets and the new forecast on the Grafana panel; count corrections."""
    for report in reports:
        if report.revision:
            metrics.DEMAND_CORRECTIONS.inc()
            continue
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
    return reports


def demand_params(config: Config) -> DemandParams:
    return DemandParams(bucket_ms=config.demand_bucket_ms, horizon=config.demand_horizon)


class _Unborn(StatefulBatchLogic[Any, Any, Any]):
    """A new key's logic, decided by its first item: a clock key (markers) gets the worker's
    clock, any other key the step's own logic, to which every call then goes."""

    __slots__ = ("inner", "make")

    def __init__(self, make: Callable[[Any], StatefulBatchLogic[Any, Any, Any]]) -> None:
        self.make = make
        self.inner: StatefulBatchLogic[Any, Any, Any] | None = None

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        if self.inner is None:
            self.inner = self.make(values[0])
        return self.inner.on_batch(values)

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        assert self.inner is not None
        return self.inner.on_notify()

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        assert self.inner is not None
        return self.inner.on_eof()

    def notify_at(self) -> datetime | None:
        return None if self.inner is None else self.inner.notify_at()

    def snapshot(self) -> Any:
        assert self.inner is not None
        return self.inner.snapshot()


def _keyed_logic(
    step: StepTime,
    resume: Any,
    own: Callable[[Any], StatefulBatchLogic[Any, Any, Any]],
    forward: bool,
) -> StatefulBatchLogic[Any, Any, Any]:
    """The logic of a key of a keyed step: the worker's clock or the step's own (``own``)."""
    if isinstance(resume, WatermarkTable):
        return ClockLogic(step, resume, forward)
    if resume is not None:
        return own(resume)
    return _Unborn(
        lambda first: ClockLogic(step, None, forward) if isinstance(first, Progress) else own(None)
    )


def _demand(
    config: Config, accepted: Stream[Output], cluster: Cluster, step: StepTime
) -> Stream[DemandReport]:
    """The second keyed stream: demand per category, with its forecast."""
    params = demand_params(config)

    def by_category(items: list[Output]) -> list[tuple[str, Event | Progress]]:
        routed: list[tuple[str, Event | Progress]] = []
        for item in items:
            if type(item) is Event:
                routed.append((cast(str, item.category), item))
            elif type(item) is Progress:
                routed += broadcast(item, cluster)
        return routed

    keyed = op.flat_map_batch("by_category", accepted, by_category)
    reports = op.stateful_batch(
        "demand",
        keyed,
        lambda resume: _keyed_logic(
            step, resume, lambda r: _CategoryLogic(params, step, r), forward=False
        ),
    )
    return cast(Stream[DemandReport], op.key_rm("demand_reports", reports))  # clocks send none


def _resume_parts(resume: tuple[Any, ...] | None) -> UserSnapshot:
    """A user's snapshot, also one of an older release (fewer parts: the new ones start empty)."""
    fresh: UserSnapshot = (None, None, None, [], 0, (), 0, 0, 0)
    if resume is None:
        return fresh
    return cast(UserSnapshot, (*resume, *fresh[len(resume) :]))


def _parser(key: bytes) -> Parse:
    """Parse a raw message and hide its IP and device id before anything keeps them."""

    def parse(
        raw: bytes | str, message_key: bytes | None, origin: str, ingest_ms: int, watermark_ms: int
    ) -> Event | DeadLetter:
        item = parse_event(
            raw, key=message_key, source=origin, ingest_ms=ingest_ms, watermark_ms=watermark_ms
        )
        return pseudonymise(item, key) if type(item) is Event else item

    return parse


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
    flow: Dataflow,
    config: Config,
    source: Source | None,
    clock: Clock,
    on_partitions: Callable[[list[str]], None],
) -> Stream[SourceItem]:
    """Parsed events, dead letters and event-time markers, in order per input partition."""
    if not config.pii_secret and config.sink == "kafka":
        log.warning(
            "PROFILESTREAM_PII_SECRET is not set: IPs and device ids are hashed with the public "
            "development secret, which does not protect them"
        )
    parse = _parser(pii_key(config.pii_secret))
    timing = PartitionTime(config.allowed_lateness_ms, config.idle_partition_ms)
    if source is None and config.source == "kafka":
        source = KafkaSource(
            config.brokers, config.events_topic, config.kafka_properties(), config.kafka_tail
        )
    elif source is None:
        if config.input_path is None:
            raise ValueError("source=file needs input_path")
        source = JsonlSource(config.input_path)
    if isinstance(source, DynamicSource):
        events: Source = DynamicEventSource(source, parse, timing, clock, on_partitions)
    elif isinstance(source, FixedPartitionedSource):
        events = EventSource(source, parse, timing, clock, on_partitions)
    else:
        raise TypeError(f"cannot read events from a {type(source).__name__}")
    if config.source == "kafka":
        return _kafka_in("kafka_in", flow, events)
    return op.input("file_in", flow, events)


@operator
def _kafka_in(step_id: str, flow: Dataflow, source: Source) -> Stream[SourceItem]:
    """The Kafka input, under the step id Bytewax's Kafka operator gave it (so a recovery
    store written before the flow kept event time resumes from its offsets)."""
    return op.input("kafka_input", flow, source)


def _route_users(items: list[SourceItem], cluster: Cluster) -> list[tuple[str, Any]]:
    """Key events by user; send each marker to every worker, under its clock key."""
    routed: list[tuple[str, Any]] = []
    for item in items:
        if type(item) is Event:
            routed.append((item.user_id, item))
        else:
            routed += broadcast(cast(Progress, item), cluster)
    return routed


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
    timers: Callable[[], EventTimeSpeed] = EventTimeSpeed,
) -> Dataflow:
    """Build the dataflow for ``config``; the keyword arguments replace its parts in tests.

    ``source`` is any Bytewax source of ``(raw JSON line, origin)`` pairs, as
    :class:`JsonlSource` gives them, one input partition per source partition; the origin
    is what makes a profile's incarnation unique. ``sinks`` maps output names (the keys of
    :data:`OUTPUT_FILES`) to sinks, which receive ``(key, JSON)`` pairs: user id and delta,
    ``"dlq"`` and dead letter, user id and segment transition or alert, category and demand
    report; outputs left out of ``sinks`` are not written. ``clock`` is the wall clock;
    ``timers`` makes each worker's estimate of how fast event time runs, which sets how
    soon timers look again (never what they see).
    """
    model = encoder or shared_embedder(config)
    if sentiment is None:
        from operators.text import load_sentiment_model

        sentiment = load_sentiment_model(config.sentiment_model)
    head = getattr(sentiment, "embedding", None)
    if head is not None and not head.reads(model.name):
        raise ValueError(
            f"the sentiment model's embedding head reads {head.model} vectors, but the flow "
            f"embeds with {model.name}: train it again with the flow's model"
        )
    cluster = Cluster()
    partitions: list[str] = []  # the input partitions, as the source lists them

    def on_partitions(names: list[str]) -> None:
        partitions[:] = names

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
        time=cluster.step(
            "profile",
            lambda: partitions,
            clock,
            timers,
            config.allowed_lateness_ms,
            confirm_idle_ms=config.idle_partition_ms // 2,
        ),
    )
    flow = Dataflow("profilestream")
    op.input("cluster", flow, ClusterSource(cluster))  # first: each worker learns its place
    items = _inputs(flow, config, source, clock, on_partitions)
    valid = op.branch("valid", items, lambda item: type(item) is not DeadLetter)
    rejected = cast(Stream[DeadLetter], valid.falses)
    by_user = op.flat_map_batch("by_user", valid.trues, lambda b: _route_users(b, cluster))
    results: Stream[Output] = op.key_rm(
        "drop_key",
        op.stateful_batch(
            "profile",
            by_user,
            lambda resume: _keyed_logic(
                context.time, resume, lambda r: _UserLogic(context, r), forward=True
            ),
        ),
    )
    deltas = op.filter_map("deltas", results, _only(ProfileDelta))
    duplicates = op.filter_map("duplicates", results, _only(DeadLetter))
    dead = op.merge("dead_letters", rejected, duplicates)
    dead = op.inspect("count_dead", dead, lambda _s, d: metrics.DEAD_LETTERS.labels(d.reason).inc())
    demand_time = cluster.step(
        "demand", cluster.worker_channels, clock, timers, config.allowed_lateness_ms
    )
    outputs = _Outputs(
        deltas=deltas,
        dead=dead,
        segments=op.filter_map("transitions", results, _only(SegmentTransition)),
        alerts=op.filter_map("alerts", results, _only(Alert)),
        demand=_demand(config, results, cluster, demand_time),
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
