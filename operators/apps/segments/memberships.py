"""Memberships: segments evaluated on a profile at an event time, their transitions, and
when time alone could next change them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import msgspec

from operators.apps.segments.conditions import RFM_PREFIX, RFM_READS, SegmentBook, Specs
from operators.apps.segments.rfm import next_rfm_change_ms, profile_rfm, rfm_group
from operators.profile import UserProfile


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
    profile: UserProfile,
    book: SegmentBook,
    specs: Specs,
    now_ms: int,
    event_id: str | None,
    event_type: str | None = None,
) -> list[SegmentTransition]:
    """Bring ``profile.segments`` and ``profile.rfm`` up to ``now_ms``; return what changed.

    Call it after every event of the user (``now_ms`` its event time, ``event_id`` its id)
    and when a timer set by :func:`next_check_ms` fires (``event_id=None``). ``now_ms`` is
    clamped to the user's newest event. Memberships of segments the book no longer defines
    are exited. Transitions come in the book's order, then exits of dropped segments and of
    the old RFM group, then the entry of the new one.

    With ``event_type``, only the segments an event of that type can move are tested (see
    ``SegmentBook.checks_after``), and the RFM score only after a purchase: the others
    cannot have changed since the last full evaluation -- time alone moves them only at the
    checks :func:`next_check_ms` schedules, which run before the event. Pass it only when
    this book evaluated the profile before (not for a new profile or a reloaded book).
    """
    now = _clamped(now_ms, profile)
    members = profile.segments
    moves: list[SegmentTransition] = []
    checks = book.checks if event_type is None else book.checks_after[event_type]
    for name, test in checks:
        if test(profile, now, specs):
            if name not in members:
                members[name] = now
                moves.append(_transition(profile, name, "enter", now, event_id, book))
        elif name in members:
            del members[name]
            moves.append(_transition(profile, name, "exit", now, event_id, book))
    if event_type is not None and event_type not in RFM_READS:
        return moves
    score = "" if book.rfm is None else profile_rfm(profile, book.rfm, now)
    group = rfm_group(score)
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


def next_check_ms(
    book: SegmentBook,
    profile: UserProfile,
    specs: Specs,
    now_ms: int,
    event_type: str | None = None,
    due_ms: int = 0,
) -> int | None:
    """The earliest event time after ``now_ms`` when a membership or the RFM score could
    change without the user acting; ``None`` when only an event can change them.

    Conservative: at that time something *may* change (evaluate, then ask again), but
    nothing changes before it.

    With ``event_type``, an event of that type was just applied and ``due_ms`` is what this
    book answered before it (0: none): only the conditions such an event can move are asked
    again (see ``SegmentBook.timed_after``), and the RFM score only after a purchase. The
    others could change no earlier than ``due_ms`` and still cannot, so the earlier of
    ``due_ms`` and the new answers is as safe; where it is earlier than the full answer, the
    check finds nothing to change and asks again. Pass it only when this book evaluated the
    profile before (as for :func:`update_memberships`).
    """
    now = _clamped(now_ms, profile)
    timed, cuts = book.timed, book.rfm
    best = None
    if event_type is not None and (not due_ms or due_ms > now):
        timed = book.timed_after[event_type]
        cuts = cuts if event_type in RFM_READS else None
        best = due_ms or None
    for next_change in timed:
        t = next_change(profile, now, specs)
        if t is not None and (best is None or t < best):
            best = t
    if cuts is not None:
        t = next_rfm_change_ms(profile, cuts, now)
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
