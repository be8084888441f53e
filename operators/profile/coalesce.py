"""Coalesce a user's changes into one delta per emit interval.

A busy user changes their profile many times a second; consumers need the result, not
every step. The flow folds each event into the state at once (:mod:`operators.profile`) and
notes it in the user's :class:`PendingChanges`; when the interval has passed since the first
of them entered the system (:func:`due_after`) -- or at once with an interval of 0 --
:func:`emit` turns the changes into one :class:`~operators.profile.deltas.ProfileDelta`
listing every event it covers. The patch is computed once per delta, between the fields the
last delta published (:func:`published`, taken when the first change of the interval
arrives) and now, so the per-event path never copies or compares the profile; the windows,
which change as a whole with every on-time event, are sent whole.

Pending changes are part of the state the flow snapshots, so a restart neither loses nor
repeats them: the resumed flow sends them when they fall due.

>>> import numpy as np
>>> from operators.ingest import Event
>>> from operators.profile import ProfileParams, apply_event
>>> params = ProfileParams()
>>> state, pending = None, PendingChanges(due_ms=1_000)
>>> for i in range(3):
...     event = Event(f"e{i}", "u1", 1_700_000_000_000 + i, "view", item_id=f"i{i}")
...     state, _ = apply_event(state, event, None, params, dim=2, dropped=pending.dropped)
...     note(pending, event)
>>> delta = emit(state, None, pending, params, now_ms=1_000)
>>> delta.kind, delta.version, delta.event_ids, delta.changed["counts"]
('full', 3, ['e0', 'e1', 'e2'], {'view': 3})
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import numpy as np

from operators.ingest import Event
from operators.profile.deltas import ProfileDelta, encode_vector, patch_between
from operators.profile.fields import profile_fields, public_fields, rounded, window_fields
from operators.profile.state import ProfileParams, UserState


class PendingChanges(msgspec.Struct):
    """What changed in a profile since its last delta, until that delta goes out.

    ``due_ms`` is the wall-clock time it must go out; ``ingest_ms`` the earliest time one of
    its events entered the system (0 if unknown), so ``processed_ms - ingest_ms`` of the
    delta is the longest any of them waited; ``dropped`` collects the ``(field, key)`` pairs
    capped maps let go (see :func:`operators.profile.deltas.patch_between`).
    """

    due_ms: int
    event_ids: list[str] = []
    ingest_ms: int = 0
    event_time_ms: int = 0
    dropped: set[tuple[str, str]] = set()
    windows_moved: bool = False


_pending_decoder = msgspec.msgpack.Decoder(PendingChanges)


def encode_pending(pending: PendingChanges) -> bytes:
    """The pending changes as bytes: an immutable copy for a snapshot."""
    return msgspec.msgpack.encode(pending)


def decode_pending(data: bytes) -> PendingChanges:
    """Inverse of :func:`encode_pending`."""
    return _pending_decoder.decode(data)


def due_after(now_ms: int, ingest_ms: int, interval_ms: int) -> int:
    """When a delta whose first event entered the system at ``ingest_ms`` (its Kafka
    timestamp; 0: unknown) and reached the user at ``now_ms`` goes out.

    One interval after it entered: time it queued before the user (in the broker, behind a
    busy batch, waiting for its text vector) counts against the interval instead of adding
    to it, so the interval bounds the wait from producer to delta. An event that has already
    waited an interval or more -- a backlog being caught up -- or that says it entered in
    the future (a producer's clock ahead) waits a whole interval from now, so a catching-up
    flow still coalesces.

    >>> [due_after(10_000, ingest, 1_000) for ingest in (9_800, 8_000, 12_000, 0)]
    [10800, 11000, 11000, 11000]
    """
    if 0 < ingest_ms <= now_ms < ingest_ms + interval_ms:
        return ingest_ms + interval_ms
    return now_ms + interval_ms


def note(pending: PendingChanges, event: Event, in_windows: bool = True) -> None:
    """Record that ``event`` changed the profile (in place); ``in_windows``: not too late
    for the windows."""
    pending.event_ids.append(event.event_id)
    pending.windows_moved |= in_windows
    if event.ingest_ms and (not pending.ingest_ms or event.ingest_ms < pending.ingest_ms):
        pending.ingest_ms = event.ingest_ms
    pending.event_time_ms = max(pending.event_time_ms, event.ts_ms)


def note_clock(pending: PendingChanges, at_ms: int) -> None:
    """Record that the clock alone changed the profile at event time ``at_ms`` (a segment
    that a quiet user left as time passed): a delta with no new events."""
    pending.event_time_ms = max(pending.event_time_ms, at_ms)


class Published(NamedTuple):
    """What the last delta told consumers: its fields (:func:`profile_fields`), the interest
    vector and the version."""

    fields: dict[str, Any]
    interest: np.ndarray
    version: int


def published(state: UserState) -> Published:
    """Capture ``state`` as its last delta published it (before more events change it)."""
    profile = state.profile
    return Published(profile_fields(profile), profile.interest, profile.version)


def emit(
    state: UserState,
    before: Published | None,
    pending: PendingChanges,
    params: ProfileParams,
    now_ms: int,
) -> ProfileDelta:
    """The delta from what the last delta published (``None`` if none) to ``state``.

    It is full for a new profile, every ``full_every``-th delta, and when the decay anchor
    moved or the item memory was rebuilt; ``state``'s delta bookkeeping is updated.
    """
    profile = state.profile
    full = before is None or state.needs_full or state.deltas_since_full + 1 >= params.full_every
    moved = before is None or not np.array_equal(before.interest, profile.interest)
    interest = encode_vector(profile.interest, params.vector_encoding) if full or moved else None
    if full:
        changed = public_fields(profile, params)
        state.deltas_since_full, state.needs_full = 0, False
    else:
        assert before is not None
        after = profile_fields(profile)
        changed = rounded(patch_between(before.fields, after, pending.dropped))
        if pending.windows_moved:  # windows change as a whole: every span is sent
            changed["windows"] = window_fields(profile, params)
        state.deltas_since_full += 1
    return ProfileDelta(
        user_id=profile.user_id,
        version=profile.version,
        kind="full" if full else "patch",
        incarnation=profile.incarnation,
        event_time_ms=pending.event_time_ms,
        event_ids=pending.event_ids,
        model_version=profile.model_version,
        base_version=0 if full or before is None else before.version,
        changed=changed,
        interest=interest,
        ingest_ms=pending.ingest_ms,
        processed_ms=now_ms,
    )


def settled(state: UserState, params: ProfileParams, now_ms: int) -> ProfileDelta:
    """The full delta of the profile as last published, at the same version.

    A user whose newest delta is a patch gets one once quiet for a while: on a compacted
    deltas topic, whose newest record per user survives, a consumer starting from the
    beginning then finds every quiet user complete instead of a patch whose full delta was
    compacted away. Consumers that saw the patch drop it as ``stale`` (same version).

    >>> from operators.ingest import Event
    >>> from operators.profile import ProfileParams, apply_event
    >>> event = Event("e1", "u1", 1_700_000_000_000, "view", item_id="i1")
    >>> state, _ = apply_event(None, event, None, ProfileParams(), dim=2)
    >>> delta = settled(state, ProfileParams(), now_ms=5)
    >>> delta.kind, delta.version, delta.event_ids, delta.changed["counts"]
    ('full', 1, [], {'view': 1})
    """
    profile = state.profile
    return ProfileDelta(
        user_id=profile.user_id,
        version=profile.version,
        kind="full",
        incarnation=profile.incarnation,
        event_time_ms=profile.last_seen_ms,
        event_ids=[],
        model_version=profile.model_version,
        changed=public_fields(profile, params),
        interest=encode_vector(profile.interest, params.vector_encoding),
        processed_ms=now_ms,
    )


def erase(
    state: UserState | None,
    pending: PendingChanges | None,
    event: Event,
    params: ProfileParams,
    now_ms: int,
) -> ProfileDelta:
    """The tombstone for ``delete_user``; it also covers the events still pending."""
    covered = [*(pending.event_ids if pending else []), event.event_id]
    ingest = min(filter(None, [pending.ingest_ms if pending else 0, event.ingest_ms]), default=0)
    return _tombstone(state, event.user_id, covered, event.ts_ms, "deleted", params, now_ms, ingest)


def expire(
    state: UserState, pending: PendingChanges | None, params: ProfileParams, now_ms: int
) -> ProfileDelta:
    """The tombstone of a user inactive for the time to live (``reason: expired``); it
    covers the events still pending and is dated when the user fell due."""
    profile = state.profile
    covered = list(pending.event_ids) if pending else []
    ingest = pending.ingest_ms if pending else 0
    at = profile.last_seen_ms
    return _tombstone(state, profile.user_id, covered, at, "expired", params, now_ms, ingest)


def _tombstone(
    state: UserState | None,
    user_id: str,
    covered: list[str],
    at_ms: int,
    reason: str,
    params: ProfileParams,
    now_ms: int,
    ingest_ms: int,
) -> ProfileDelta:
    return ProfileDelta(
        user_id=user_id,
        version=state.profile.version + 1 if state is not None else 1,
        kind="tombstone",
        incarnation=state.profile.incarnation if state is not None else "",
        event_time_ms=at_ms,
        event_ids=covered,
        model_version=params.model_version,
        ingest_ms=ingest_ms,
        processed_ms=now_ms,
        reason=reason,
    )
