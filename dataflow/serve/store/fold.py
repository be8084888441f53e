"""The rules of the profile store, as a pure fold of one user's records: shared by both backends.

``profilestream serve`` consumes the deltas topic (and the segments topic) and keeps every
user's newest profile in a :class:`ProfileStore`, which answers reads in microseconds. The
rules are :class:`operators.profile.deltas.ProfileView`'s, written as a pure step over one user's
stored state (:func:`apply_record`) so that both backends share them:

* a delta applies only when it is newer than the stored version of the same incarnation
  (replays after a flow restart are ``stale``); a patch applies to any stored version from
  its ``base_version`` up; a patch whose base is ahead of the stored version is a ``gap``:
  the stored profile stays as it is until the next full delta of the user;
* a user starts from a full delta; a ``tombstone`` delta deletes the user and remembers the
  incarnation, so a replayed delta of the deleted profile cannot bring it back;
* a Kafka tombstone (the user's key with a null value, which the flow sends after the JSON
  tombstone so that compaction drops the user) deletes whatever profile is stored, and
  remembers its incarnation the same way;
* a segment transition adds the user to a segment (``enter``) or removes them (``exit``);
  a replay re-sends a suffix of a user's transitions in order, so set semantics end on the
  same memberships without keeping every transition id.

A :class:`Batch` -- consumed records and the offsets after them -- is applied in one
transaction, offsets included (SQLite: one write transaction; Redis: one ``MULTI``/``EXEC``
after ``WATCH``-ing the batch's users), so the offsets a store reports are exactly those of
what it holds, and a restarted consumer resumes from :meth:`ProfileStore.committed_offsets`
without re-reading or losing anything. Both backends read a batch's users first, fold the
records with the pure step, and write the users that changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from operators.apps.segments import SegmentTransition
from operators.profile import Applied, ProfileDelta, apply_patch

#: ``(topic, partition)`` -> the next offset to read.
Offsets = dict[tuple[str, int], int]


class KafkaTombstone(msgspec.Struct, frozen=True):
    """A null-valued message on the deltas topic: erase whatever the store has for the key."""

    user_id: str


Record = ProfileDelta | KafkaTombstone | SegmentTransition


class StoredProfile(msgspec.Struct, omit_defaults=True):
    """A user's profile as the store keeps and serves it (``interest`` only when asked).

    ``fields`` are the public profile fields of the deltas contract (counts, affinities,
    windows, segments, ...); ``interest`` is the vector as the deltas carry it (base64 of
    little-endian float16). ``processed_ms`` is when the flow emitted the newest delta
    applied, ``stored_ms`` when the store applied it.
    """

    user_id: str
    incarnation: str
    version: int
    model_version: str
    event_time_ms: int
    processed_ms: int
    stored_ms: int
    fields: dict[str, Any]
    interest: str | None = None


@dataclass(frozen=True)
class StoredUser:
    """One user's stored state: the profile (``None``: none) and the deleted incarnations."""

    profile: StoredProfile | None = None
    deleted: frozenset[str] = frozenset()


EMPTY = StoredUser()


def apply_delta(state: StoredUser, delta: ProfileDelta, now_ms: int) -> tuple[StoredUser, Applied]:
    """The user's state after ``delta``, and what became of it (pure; ``state`` is not changed).

    >>> d = ProfileDelta("u", 2, "patch", "e1", 0, [], "m", base_version=1, changed={"a": 1})
    >>> apply_delta(EMPTY, d, 0)[1]  # a user starts from a full delta
    <Applied.GAP: 'gap'>
    """
    if delta.incarnation in state.deleted:
        return state, Applied.STALE
    if delta.kind == "tombstone":
        return StoredUser(None, state.deleted | {delta.incarnation}), Applied.APPLIED
    current = state.profile
    if current is not None and current.incarnation == delta.incarnation:
        if delta.version <= current.version:
            return state, Applied.STALE
        if delta.kind == "patch":
            if delta.base_version > current.version:
                return state, Applied.GAP
            fields = dict(current.fields)
            for name in delta.changed:  # copy only the maps the patch merges into
                if isinstance(fields.get(name), dict):
                    fields[name] = dict(fields[name])
            apply_patch(fields, delta.changed)
            interest = delta.interest if delta.interest is not None else current.interest
            return StoredUser(_profile(delta, fields, interest, now_ms), state.deleted), (
                Applied.APPLIED
            )
    if delta.kind != "full" or delta.interest is None:
        return state, Applied.GAP
    # The maps are shared with the delta, never changed: a patch copies what it merges into.
    fields = dict(delta.changed)
    return StoredUser(_profile(delta, fields, delta.interest, now_ms), state.deleted), (
        Applied.APPLIED
    )


def _profile(
    delta: ProfileDelta, fields: dict[str, Any], interest: str | None, now_ms: int
) -> StoredProfile:
    return StoredProfile(
        delta.user_id,
        delta.incarnation,
        delta.version,
        delta.model_version,
        delta.event_time_ms,
        delta.processed_ms,
        now_ms,
        fields,
        interest,
    )


def apply_kafka_tombstone(state: StoredUser) -> tuple[StoredUser, bool]:
    """Erase the stored profile (remembering its incarnation); whether there was one."""
    if state.profile is None:
        return state, False
    return StoredUser(None, state.deleted | {state.profile.incarnation}), True


@dataclass
class BatchResult:
    """What a batch did: outcomes by kind of record, and the users written."""

    deltas: dict[str, int] = field(default_factory=dict)  # applied / stale / gap
    kafka_tombstones: dict[str, int] = field(default_factory=dict)  # deleted / absent
    transitions: dict[str, int] = field(default_factory=dict)  # enter / exit
    users_written: int = 0
    #: ``stored_ms - processed_ms`` of each delta applied: how far the store trails the flow.
    delays_ms: list[int] = field(default_factory=list)


@dataclass
class Folded:
    """A batch folded over the users' loaded states: what to write (pure output)."""

    states: dict[str, StoredUser]  # users whose state changed, and their new state
    segment_ops: list[tuple[str, str, bool]]  # (segment, user, True: enter / False: exit)
    result: BatchResult


def fold_batch(loaded: Mapping[str, StoredUser], records: Iterable[Record], now_ms: int) -> Folded:
    """Apply ``records`` in order to the users' ``loaded`` states (missing users are new)."""
    states: dict[str, StoredUser] = {}
    ops: list[tuple[str, str, bool]] = []
    deltas: Counter[str] = Counter()
    tombstones: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    delays: list[int] = []
    for record in records:
        if isinstance(record, SegmentTransition):
            ops.append((record.segment, record.user_id, record.direction == "enter"))
            transitions[record.direction] += 1
            continue
        uid = record.user_id
        state = states.get(uid) or loaded.get(uid, EMPTY)
        if isinstance(record, KafkaTombstone):
            new, deleted = apply_kafka_tombstone(state)
            tombstones["deleted" if deleted else "absent"] += 1
        else:
            new, outcome = apply_delta(state, record, now_ms)
            deltas[outcome.value] += 1
            if outcome is Applied.APPLIED and record.processed_ms:
                delays.append(now_ms - record.processed_ms)
        if new is not state:
            states[uid] = new
    result = BatchResult(dict(deltas), dict(tombstones), dict(transitions), len(states), delays)
    return Folded(states, ops, result)


@dataclass
class Batch:
    """Consumed records in partition order, and the offsets to commit with them."""

    records: Sequence[Record]
    offsets: Mapping[tuple[str, int], int] = field(default_factory=dict)
