"""The per-user step under Bytewax: :class:`UserLogic` adapts the pure profile step and the
applications around it to a :class:`~bytewax.operators.StatefulBatchLogic` -- waiting for
text vectors, timers, the end of the input and snapshots."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
from bytewax.operators import StatefulBatchLogic

from dataflow import metrics
from dataflow.clock import (
    Clock,
    StepTime,
    WorkerTime,
    as_datetime,
)
from dataflow.model_watch import ItemModelFeed, ModelWatcher
from operators.apps import (
    DEMAND_TYPES,
    Alert,
    Applications,
    after_event,
    before_event,
    decode_record,
)
from operators.apps.segments import SegmentTransition, exit_all
from operators.ingest import (
    DeadLetter,
    Event,
    Progress,
    beyond_dedupe_memory,
    duplicate_of,
    erased_user,
)
from operators.profile import (
    Outcome,
    PendingChanges,
    ProfileDelta,
    ProfileParams,
    Published,
    UserState,
    apply_event,
    decode_pending,
    emit,
    encode_pending,
    encode_state,
    erase,
    expire,
    note,
    note_clock,
    published,
    settled,
)
from operators.recsys import ItemVectors
from operators.text import SentimentScorer, read_text
from operators.text.embedding import TextBatcher, embedding_text, typed_text


@dataclass(frozen=True)
class UserContext:
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


class UserSnapshot(msgspec.Struct, frozen=True, tag="user/2"):
    """What Bytewax keeps of a user at each epoch, immutable as it requires.

    ``emitted`` is the state as of the last delta; while changes are pending, ``current``
    and ``pending`` are the state now and those changes (all MessagePack bytes). ``waiting``
    holds the events waiting for a text vector; ``check_due_ms`` the event time the segments
    must be checked again at, ``expires_ms`` the one the user expires at (0: never);
    ``segments`` the user's memberships (so the segment-size gauges resume too);
    ``erased_ms``, once the user is erased, the newest event time of theirs that re-sends
    must not pass (0: none); ``settle_at_ms`` the wall time a settling full delta is due.
    The tag is the format's version: release 1 kept these nine as a positional tuple.
    """

    emitted: bytes | None = None
    current: bytes | None = None
    pending: bytes | None = None
    waiting: list[Event] = msgspec.field(default_factory=list)
    check_due_ms: int = 0
    segments: tuple[str, ...] = ()
    expires_ms: int = 0
    erased_ms: int = 0
    settle_at_ms: int = 0


class UserLogic(StatefulBatchLogic[Event, Output, UserSnapshot]):
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

    def __init__(self, context: UserContext, resume: UserSnapshot | tuple[Any, ...] | None) -> None:
        snap = resumed(resume)
        self.context = context
        self.time: WorkerTime = context.time.here()
        self.settle_at = snap.settle_at_ms  # wall time a settling full delta is due (0: none)
        self.due = snap.check_due_ms  # event time of the next segment check (0: none)
        self.members = snap.segments
        self.expires = snap.expires_ms  # event time the user expires at (0: never)
        self.erased = snap.erased_ms  # newest event time of an erased user: older re-sends fail
        for segment in self.members:
            metrics.SEGMENT_MEMBERS.labels(segment).inc()
        self.emitted = snap.emitted  # the state as of the last delta, as bytes
        current, pending = snap.current, snap.pending
        self.state: UserState | None = None if current is None else decode_record(current)
        self.pending = None if pending is None else decode_pending(pending)
        # Events that waited for a vector at the snapshot may have gone out in a delta
        # after it, before a crash: they are read again, as far as deltas are concerned.
        self.waiting: list[Event] | None = [
            msgspec.structs.replace(e, replayed=True) for e in snap.waiting
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
        current = pending = None
        if self.pending is not None and self.state is not None:
            current, pending = encode_state(self.state), encode_pending(self.pending)
        return UserSnapshot(
            emitted=self.emitted,
            current=current,
            pending=pending,
            waiting=list(self.waiting or ()),
            check_due_ms=self.due,
            segments=self.members,
            expires_ms=self.expires,
            erased_ms=self.erased,
            settle_at_ms=self.settle_at,
        )

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


def resumed(resume: UserSnapshot | tuple[Any, ...] | None) -> UserSnapshot:
    """A user's snapshot as this release keeps it; release 1's positional tuples (of up to
    nine parts: the later ones start empty) too."""
    if resume is None:
        return UserSnapshot()
    if isinstance(resume, tuple):
        return UserSnapshot(*resume)
    return resume
