"""The user machine: everything the flow does for one user, as one deterministic step.

A user's events arrive in batches; some wait for a text vector; each is de-duplicated,
applied to the profile (:func:`operators.profile.apply_event`), seen by the applications
(:mod:`operators.apps.user_step`) and noted in the pending changes a delta will carry.
Timers act at event time, by the watermark: segment checks, expiry, and forgetting the
marker that refuses an erased user's re-sent events; at wall time only what is about
delivery: a coalesced delta falls due, a settling full delta follows a quiet user's patch.

:class:`UserMachine` holds that state and has one method per input -- :meth:`receive`
(events), :meth:`advance` (vectors became ready), :meth:`on_time` (the clocks moved),
:meth:`finish` (the input ended) -- each returning the outputs, with :meth:`next_due` the
times it must be woken at. It imports no stream processor: the Bytewax logic
(:mod:`dataflow.user_logic`) only adapts it, and the tests' reference runs it as it is.
Given the same inputs, watermarks and vectors it gives the same outputs, which is what lets
a replay after a failure produce what the first run did.

>>> from operators.apps import Applications, RiskParams, load_segment_book
>>> from operators.ingest import Event
>>> from operators.profile import ProfileParams
>>> params = ProfileParams()
>>> apps = Applications(load_segment_book(windows=params.windows), params.windows, RiskParams())
>>> settings = MachineSettings(params, lambda: apps, dim=2, emit_interval_ms=1_000)
>>> user = UserMachine(settings, Ports(vectors=None))
>>> login = Event("e1", "u1", 1_700_000_000_000, "login")
>>> [out.segment for out in user.receive([login], now_ms=0)]  # the delta waits
['new_users']
>>> user.next_due()  # the delta at wall time 1000; a new user is new for 7 days of event time
Due(wall_ms=1000, event_ms=1700604800000)
>>> [out.kind for out in user.on_time(now_ms=1_000, watermark_ms=0)]
['full']
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import numpy as np

from operators.apps import (
    DEMAND_TYPES,
    Alert,
    Applications,
    after_event,
    before_event,
    decode_record,
)
from operators.apps.learned_risk import ItemVerdict, PurchaseCheck
from operators.apps.segments import SegmentBook, SegmentTransition, exit_all
from operators.ingest import (
    DeadLetter,
    Event,
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
    due_after,
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
from operators.text import SentimentScorer, read_text
from operators.text.embedding import embedding_text, typed_text
from operators.user.ports import Catalog, ItemFeed, NullObserver, TextVectors, UserObserver

#: What the machine emits: deltas, dead letters, segment transitions, alerts, the accepted
#: events category demand counts, and what purchases and chargebacks tell their item's view.
UserOutput = (
    ProfileDelta | DeadLetter | SegmentTransition | Alert | Event | PurchaseCheck | ItemVerdict
)


@dataclass(frozen=True)
class MachineSettings:
    """The settings every user's machine shares (times in ms; 0 turns a timer off)."""

    params: ProfileParams
    applications: Callable[[], Applications]  # now: the segment book may be reloaded
    dim: int
    emit_interval_ms: int = 0
    keywords_per_text: int = 5
    expire_after_ms: int = 0
    erased_memory_ms: int = 0
    settle_full_ms: int = 0
    prompts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ports:
    """What the machines of a worker share with the world (see :mod:`operators.user.ports`);
    ``vectors`` may be ``None`` where no event needs a text vector."""

    vectors: TextVectors | None
    sentiment: SentimentScorer | None = None
    catalog: Catalog | None = None
    feed: ItemFeed | None = None
    observer: UserObserver = field(default_factory=NullObserver)


class Due(NamedTuple):
    """When a machine must be woken: at a wall time (a delta or a text batch due) and at an
    event time (a timer the watermark must pass); 0 for neither."""

    wall_ms: int
    event_ms: int


class UserSnapshot(msgspec.Struct, frozen=True, tag="user/2", weakref=True):
    """What a machine keeps across a restart, immutable as a stream processor requires.

    ``emitted`` is the state as of the last delta; while changes are pending, ``current``
    and ``pending`` are the state now and those changes (all MessagePack bytes). ``waiting``
    holds the events waiting for a text vector; ``check_due_ms`` the event time the segments
    must be checked again at, ``expires_ms`` the one the user expires at (0: never);
    ``segments`` the user's memberships (so the segment-size gauges resume too);
    ``erased_ms``, once the user is erased, the newest event time of theirs that re-sends
    must not pass (0: none); ``settle_at_ms`` the wall time a settling full delta is due.
    The tag is the format's version: release 1 kept these nine as a positional tuple.
    (A machine refers to its final snapshot weakly: see :meth:`UserMachine.snapshot`.)
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


def resumed(resume: UserSnapshot | tuple[Any, ...] | None) -> UserSnapshot:
    """A user's snapshot as this release keeps it; release 1's positional tuples (of up to
    nine parts: the later ones start empty) too."""
    if resume is None:
        return UserSnapshot()
    if isinstance(resume, tuple):
        return UserSnapshot(*resume)
    return resume


def vector_of(
    settings: MachineSettings, catalog: Catalog | None, event: Event
) -> tuple[np.ndarray | None, str | None]:
    """The event's vector if the catalog has it, else the text whose vector it needs;
    ``(None, None)`` when its type does not move the interest vector."""
    if not settings.params.moves_interest(event):
        return None, None
    if catalog is not None and typed_text(event) is None:
        vectors = catalog.current()
        vector = vectors.get(event.item_id) if vectors is not None else None
        if vector is not None:
            return vector, None
    return None, embedding_text(event, settings.prompts)


#: Past this many distinct sets of memberships, a new one is not shared (see
#: :func:`shared_memberships`): a book of many segments cannot grow the table without bound.
MAX_SHARED_MEMBERSHIPS = 4096
_memberships: dict[tuple[str, ...], tuple[str, ...]] = {}


def shared_memberships(segments: tuple[str, ...]) -> tuple[str, ...]:
    """The one tuple every machine of the process holds for this set of memberships.

    Most users are members of one of a few sets, and a tuple each cost a user ~60 bytes
    (more after a restart, when each user's segment names came back as strings of its own).

    >>> shared_memberships(("new_users",)) is shared_memberships(tuple(["new_users"]))
    True
    """
    shared = _memberships.get(segments)
    if shared is None:
        if len(_memberships) >= MAX_SHARED_MEMBERSHIPS:
            return segments
        shared = _memberships.setdefault(segments, segments)
    return shared


class UserMachine:
    """One user's state and the step that moves it: see the module docstring."""

    __slots__ = (
        "before",
        "book",
        "due",
        "emitted",
        "erased",
        "expires",
        "handed",
        "members",
        "oldest_waiting_ms",
        "pending",
        "ports",
        "registered",
        "settings",
        "settle_at",
        "state",
        "waiting",
    )

    def __init__(
        self, settings: MachineSettings, ports: Ports, snapshot: UserSnapshot | None = None
    ) -> None:
        snap = snapshot or UserSnapshot()
        self.settings = settings
        self.ports = ports
        self.settle_at = snap.settle_at_ms  # wall time a settling full delta is due (0: none)
        self.due = snap.check_due_ms  # event time of the next segment check (0: none)
        self.members = shared_memberships(snap.segments)
        self.expires = snap.expires_ms  # event time the user expires at (0: never)
        self.erased = snap.erased_ms  # newest event time of an erased user: older re-sends fail
        if self.members:
            ports.observer.resumed(self.members)
        ports.observer.held(1, len(snap.emitted or b""))
        self.emitted = snap.emitted  # the state as of the last delta, as bytes
        #: The final snapshot, which holds those bytes instead (see :meth:`snapshot`).
        self.handed: weakref.ref[UserSnapshot] | None = None
        current, pending = snap.current, snap.pending
        self.state: UserState | None = None if current is None else decode_record(current)
        self.pending = None if pending is None else decode_pending(pending)
        # Events that waited for a vector at the snapshot may have gone out in a delta
        # after it, before a crash: they are read again, as far as deltas are concerned.
        self.waiting: list[Event] | None = [
            msgspec.structs.replace(e, replayed=True) for e in snap.waiting
        ] or None  # None saves a list a user
        #: The oldest event time still waiting for a vector (0: none): the watermark the
        #: worker forwards to category demand must not pass it.
        self.oldest_waiting_ms = min((e.ts_ms for e in self.waiting or ()), default=0)
        self.before: Published | None = None  # what the last delta published, while pending
        self.registered = 0  # waiting events, from the first, whose texts joined a batch
        #: The segment book that last evaluated the profile: while it stays the one in use,
        #: an event tests only the segments its type can move.
        self.book: SegmentBook | None = None

    # --- the inputs ---------------------------------------------------------------------

    def receive(self, events: list[Event], now_ms: int) -> list[UserOutput]:
        """A batch of the user's events, in arrival order (the list becomes the machine's)."""
        oldest = min(e.ts_ms for e in events) if events else 0
        if self.waiting is None:
            self.waiting = events
            self.oldest_waiting_ms = oldest
        else:
            self.waiting.extend(events)
            if oldest and (not self.oldest_waiting_ms or oldest < self.oldest_waiting_ms):
                self.oldest_waiting_ms = oldest
        return self.advance(now_ms)

    def advance(self, now_ms: int) -> list[UserOutput]:
        """Apply waiting events in order until one needs a vector that is not ready yet.

        The texts of the events queued behind that one are registered once, so they join
        the same batch: a user's burst of searches waits for one batch, not one per search.
        """
        self._take_back()
        waiting = self.waiting
        out: list[UserOutput] = []
        if not waiting:
            return out
        applied = 0
        for event in waiting:
            vector, text = vector_of(self.settings, self.ports.catalog, event)
            if text is not None:
                vector = self._vectors().vector(text, now_ms)
                if vector is None:
                    break
            applied += 1
            out += self._apply(event, vector, now_ms)
        del waiting[:applied]
        self.registered = max(self.registered - applied, 1)
        if len(waiting) > self.registered:
            vectors = self._vectors()
            for later in waiting[self.registered :]:
                if (text := vector_of(self.settings, self.ports.catalog, later)[1]) is not None:
                    vectors.vector(text, now_ms)
            self.registered = len(waiting)
            head = vector_of(self.settings, self.ports.catalog, waiting[0])[1]
            if head is None or vectors.vector(head, now_ms) is not None:
                out += self.advance(now_ms)  # the batch closed while the queue joined it
        if not self.waiting:
            self.waiting = None
            self.oldest_waiting_ms = 0
        elif applied:
            self.oldest_waiting_ms = min(e.ts_ms for e in self.waiting)
        return out

    def on_time(self, now_ms: int, watermark_ms: int) -> list[UserOutput]:
        """The wall clock reads ``now_ms`` and the worker's watermark is ``watermark_ms``.

        Timers go by the watermark: every event older than it has been applied (an event
        older still is late, and stamped so: see ``_apply``), so what a check sees does not
        depend on when the timer fired.
        """
        out = self.advance(now_ms)
        if self.due and not self.waiting and self.due <= watermark_ms:
            out += self._check_segments(watermark_ms, now_ms)
        if self.expires and not self.waiting and self.expires <= watermark_ms:
            out += self._expire(now_ms)
        if self.erased and self.erased + self.settings.erased_memory_ms <= watermark_ms:
            self.erased = 0  # re-sends this old are past the input's retention
        if self.pending is not None and now_ms >= self.pending.due_ms:
            out.append(self._emit(now_ms))
        elif self.settle_at and self.pending is None and now_ms >= self.settle_at:
            out.append(self._settle(now_ms))
        return out

    def finish(self, now_ms: int, end_ms: int) -> list[UserOutput]:
        """The input is over at event time ``end_ms`` (every vector is ready): all of it
        counts, every timer due by then runs and what is pending goes out."""
        out = self.advance(now_ms)
        if self.due and self.due <= end_ms:
            out += self._check_segments(end_ms, now_ms)
        if self.expires and self.expires <= end_ms:
            out += self._expire(now_ms)
        if self.pending is not None:
            out.append(self._emit(now_ms))
        return out

    def rest(self) -> None:
        """Keep the state only as the bytes of the last delta, if nothing is pending: how
        a worker bounds its memory. A rested state is decoded again when next needed."""
        if self.pending is None and self.emitted is not None:
            self.state = self.before = None

    def next_due(self, now_ms: int = 0) -> Due:
        """When to wake the machine (the wall clock reading ``now_ms``): wall time for deltas
        and text batches, event time for segment checks, expiry and the erased marker (0: not
        at all)."""
        wall = 0
        if self.waiting:
            batch = self._vectors().due_ms(now_ms) if self.ports.vectors is not None else None
            wall = batch or 1  # a batch closed but not yet read: wake at once
        pending = self.pending.due_ms if self.pending is not None else self.settle_at
        if pending and (not wall or pending < wall):
            wall = pending
        erased = self.erased and self.erased + self.settings.erased_memory_ms
        timed = [t for t in (self.due, self.expires, erased) if t]
        return Due(wall, min(timed) if timed else 0)

    def release(self) -> None:
        """The machine is discarded: what it held no longer counts."""
        self.ports.observer.held(-1, -len(self.emitted or b""))

    def finished(self) -> bool:
        """The user is erased and nothing of theirs is left (the marker that refuses their
        old re-sent events included): the machine may be discarded."""
        self._take_back()
        return self.emitted is None and self.state is None and not self.waiting and not self.erased

    def snapshot(self, final: bool = False) -> UserSnapshot:
        """The machine as bytes and plain values, for the stream processor's recovery store.

        ``final``: the input has ended and this is the machine's last snapshot, which takes
        the resting state's bytes instead of sharing them. Bytewax pickles every user's
        snapshot at the end of its input; while each machine still held its bytes, every
        user was in memory twice at that peak (+1.3 KB per user at 200,000 users). Should
        the machine step again, it takes the bytes back from the snapshot, which the
        stream processor still holds then (a machine whose snapshot is gone raises).
        """
        self._take_back()
        current = pending = None
        if self.pending is not None and self.state is not None:
            current, pending = encode_state(self.state), encode_pending(self.pending)
        snap = UserSnapshot(
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
        if final and self.emitted is not None:
            self.ports.observer.held(0, -len(self.emitted))
            self.emitted, self.handed = None, weakref.ref(snap)
        return snap

    def _take_back(self) -> None:
        """Take the state's bytes back from the final snapshot, if they went there."""
        if self.handed is None:
            return
        snap = self.handed()
        if snap is None:
            raise RuntimeError("a machine stepped after its final snapshot was dropped")
        self.emitted, self.handed = snap.emitted, None
        self.ports.observer.held(0, len(self.emitted or b""))

    # --- the step -----------------------------------------------------------------------

    def _vectors(self) -> TextVectors:
        vectors = self.ports.vectors
        if vectors is None:
            raise RuntimeError("an event needs a text vector, but the machine has no model")
        return vectors

    def _live(self) -> UserState | None:
        """The user's state as objects (decoded from its resting bytes if need be), with what
        the last delta published noted before a change makes it pending."""
        state = self.state
        if state is None and self.emitted is not None:
            state = decode_record(self.emitted)
        if state is not None and self.pending is None and self.before is None:
            self.before = published(state)
        return state

    def _apply(self, event: Event, vector: Any, now: int) -> list[UserOutput]:
        settings, ports = self.settings, self.ports
        out: list[UserOutput] = []
        # What the clock did before this event: by its time, or, for a late event, by the
        # watermark its partition had when it was read, which no timer can have passed
        # before the event arrived. Either way the same in every run.
        horizon = max(event.ts_ms, event.watermark_ms)
        if self.erased and self.erased + settings.erased_memory_ms <= event.watermark_ms:
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
        feed = ports.feed
        items = feed.model() if feed is not None else None
        if feed is not None and state is not None and settings.params.moves_interest(event):
            feed.observe(state.profile.item_memory, event.item_id)
        signals = read_text(event, ports.sentiment, settings.keywords_per_text, vector)
        if signals is not None and signals.polarity is not None:
            ports.observer.opinion(event.type, signals.polarity)
        dropped: set[tuple[str, str]] = set()
        new, outcome = apply_event(
            state,
            event,
            vector,
            settings.params,
            dim=settings.dim,
            signals=signals,
            items=items,
            dropped=dropped,
        )
        if outcome is Outcome.DUPLICATE or outcome is Outcome.UNVERIFIABLE:
            self.state = state
            refused = duplicate_of if outcome is Outcome.DUPLICATE else beyond_dedupe_memory
            out.append(refused(event))
            return out
        if outcome is Outcome.DELETED:
            tombstone = erase(state, self.pending, event, settings.params, now)
            return out + self._forget(state, tombstone, event.event_id)
        assert new is not None
        if outcome is Outcome.LATE:
            ports.observer.late_event()
        self.state = new
        if event.replayed:
            # The run before a restart may have sent deltas of this event already, so a
            # consumer may be ahead of what this run has sent: only a full delta is sure
            # to bring it to this version (a patch lists what changed since its base, and a
            # field that changed and changed back would stay as that consumer had it).
            new.needs_full = True
        if settings.expire_after_ms:
            self.expires = new.profile.last_seen_ms + settings.expire_after_ms
        apps = settings.applications()
        alerts, transitions, self.due, to_item = after_event(
            new, event, apps, incremental=self.book is apps.segments, due_ms=self.due
        )
        self.book = apps.segments
        for alert in alerts:
            ports.observer.alert(alert.kind)
        self._count(transitions)
        out += alerts
        out += transitions
        if to_item is not None:
            out.append(to_item)
        if event.category is not None and event.type in DEMAND_TYPES:
            out.append(event)  # category demand counts what the profile accepted
        if self.pending is None:
            self.pending = PendingChanges(
                due_ms=due_after(now, event.ingest_ms, settings.emit_interval_ms)
            )
        note(self.pending, event, in_windows=outcome is Outcome.APPLIED)
        self.pending.dropped |= dropped
        if settings.emit_interval_ms == 0:
            out.append(self._emit(now))
        return out

    def _check_segments(self, until_ms: int, now: int, emit: bool = True) -> list[UserOutput]:
        """Move the user's segments as the clock alone moves them, up to ``until_ms``."""
        state = self._live()
        if state is None:
            self.due = 0
            return []
        version = state.profile.version
        transitions, self.due = before_event(
            state, self.settings.applications(), self.due, until_ms
        )
        self.state = state
        out: list[UserOutput] = list(transitions)
        if state.profile.version == version:
            return out
        self._count(transitions)
        if self.pending is None:
            self.pending = PendingChanges(due_ms=now + self.settings.emit_interval_ms)
        note_clock(self.pending, transitions[-1].event_time_ms if transitions else until_ms)
        if emit and self.settings.emit_interval_ms == 0:
            out.append(self._emit(now))
        return out

    def _expire(self, now: int) -> list[UserOutput]:
        """Erase a user inactive for the time to live."""
        state = self._live()
        self.expires = 0
        if state is None:
            return []
        self.ports.observer.expired()
        return self._forget(state, expire(state, self.pending, self.settings.params, now), None)

    def _forget(
        self, state: UserState | None, tombstone: ProfileDelta, event_id: str | None
    ) -> list[UserOutput]:
        """Erase the user: segment exits, the tombstone, and a marker that refuses re-sends
        of their older events for ``erased_memory_ms``."""
        out: list[UserOutput] = []
        if state is not None:
            apps = self.settings.applications()
            out += exit_all(state.profile, apps.segments, tombstone.event_time_ms, event_id)
            self.erased = max(state.profile.last_seen_ms, tombstone.event_time_ms)
        else:
            self.erased = tombstone.event_time_ms
        for segment in self.members:
            self.ports.observer.transition(segment, "exit")
        out.append(tombstone)
        self.ports.observer.held(0, -len(self.emitted or b""))
        self.emitted = self.state = self.pending = self.before = self.book = None
        self.due, self.members, self.expires, self.settle_at = 0, (), 0, 0
        return out

    def _count(self, transitions: list[SegmentTransition]) -> None:
        if not transitions:
            return
        members = set(self.members)
        for change in transitions:
            self.ports.observer.transition(change.segment, change.direction)
            if change.direction == "enter":
                members.add(change.segment)
            else:
                members.discard(change.segment)
        self.members = shared_memberships(tuple(sorted(members)))

    def _emit(self, now: int) -> ProfileDelta:
        assert self.state is not None and self.pending is not None
        before = self.before
        if before is None and self.emitted is not None:  # resumed from a snapshot
            before = published(decode_record(self.emitted))
        delta = emit(self.state, before, self.pending, self.settings.params, now)
        stored = encode_state(self.state)
        self.ports.observer.held(0, len(stored) - len(self.emitted or b""))
        self.emitted = stored
        self.pending = self.before = None  # the state stays live until it is rested
        settle = delta.kind == "patch" and self.settings.settle_full_ms > 0
        self.settle_at = now + self.settings.settle_full_ms if settle else 0
        return delta

    def _settle(self, now: int) -> ProfileDelta:
        """The quiet user's last published profile as a full delta (see ``settled``)."""
        assert self.emitted is not None
        self.settle_at = 0
        state = self.state if self.state is not None else decode_record(self.emitted)
        return settled(state, self.settings.params, now)
