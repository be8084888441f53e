"""What one event of a user does beyond the profile: risk alerts and segment changes.

:func:`operators.profile.apply_event` folds an event into the profile; the applications
that read profiles then react, in this order, and that is all the flow's per-user step is:

1. :func:`before_event` -- segment checks that fell due before the event's time run first,
   as timers (a user who lapsed on Monday lapsed before Tuesday's purchase);
2. ``apply_event``;
3. :func:`after_event` -- the risk detectors see the event
   (:func:`operators.apps.risk.assess`), the segments are evaluated at the user's newest event
   time (:func:`operators.apps.segments.update_memberships`), and the next time the clock alone
   could change a membership is worked out;
4. on ``delete_user``, :func:`operators.apps.segments.exit_all` first, so segment consumers see
   the user leave.

The dataflow calls these from its Bytewax logic; tests and replays call them directly, so
the flow and its reference cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.apps.learned_risk import ItemVerdict, PurchaseCheck, from_user_event
from operators.apps.risk import Alert, RiskParams, RiskState, assess
from operators.apps.risk_model import RiskModel
from operators.apps.segments import (
    SegmentBook,
    SegmentTransition,
    catch_up,
    next_check_ms,
    update_memberships,
)
from operators.ingest import Event
from operators.ingest.units import DAY_MS
from operators.profile import UserState, WindowSpec, decode_state

#: A user's state as the applications keep it: the profile core's, carrying what the risk
#: detectors remember.
UserRecord = UserState[RiskState]


def decode_record(data: bytes) -> UserRecord:
    """A user's state from the bytes :func:`operators.profile.encode_state` made of it."""
    return decode_state(data, RiskState)


@dataclass(frozen=True)
class Applications:
    """What the per-user applications need: the segment book, the windows it reads, and the
    risk thresholds."""

    segments: SegmentBook
    windows: tuple[WindowSpec, ...]
    risk: RiskParams
    #: How long fraud verdicts usually take (the learned score's settled windows).
    risk_settle_ms: int = 7 * DAY_MS
    #: What decides a suspected takeover's purchases (``None``: the ratio thresholds).
    takeover: RiskModel | None = None


def before_event(
    state: UserState, apps: Applications, due_ms: int, until_ms: int
) -> tuple[list[SegmentTransition], int]:
    """Run the segment checks due up to ``until_ms``; (transitions, next check or 0)."""
    if not due_ms or due_ms > until_ms:
        return [], due_ms
    return catch_up(state.profile, apps.segments, apps.windows, due_ms, until_ms)


def after_event(
    state: UserState, event: Event, apps: Applications, incremental: bool = False, due_ms: int = 0
) -> tuple[list[Alert], list[SegmentTransition], int, PurchaseCheck | ItemVerdict | None]:
    """React to an applied event (in place): (alerts, transitions, next check or 0, what the
    event sends to its item's risk view).

    ``incremental``: the same segment book evaluated this profile before and asked for the
    check at ``due_ms`` (0: none), so only the segments the event's type can move are tested
    again (:func:`~operators.apps.segments.update_memberships`), and only their next changes
    asked for (:func:`~operators.apps.segments.next_check_ms`).
    """
    state.apps, alerts = assess(state.apps, event, apps.risk, apps.takeover)
    to_item = from_user_event(state.apps, event, apps.risk_settle_ms)
    profile = state.profile
    now = profile.last_seen_ms
    kind = event.type if incremental and profile.version > 1 else None
    transitions = update_memberships(
        profile, apps.segments, apps.windows, now, event.event_id, kind
    )
    due = next_check_ms(apps.segments, profile, apps.windows, now, kind, due_ms) or 0
    return alerts, transitions, due, to_item
