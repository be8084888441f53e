"""Marketing segments and RFM scores: conditions on a profile, evaluated as of event time.

A segment is a named condition on a user's profile ("carted in the last day and bought
nothing"); the flow keeps each user's memberships in ``UserProfile.segments`` (name -> event
time entered) and sends an ``enter`` or ``exit`` :class:`SegmentTransition` whenever one
changes. Definitions live in a JSON file (the bundled default is
``operators/data/segments.json``), in the spirit of Apache Unomi's conditions::

    {"segments": {
       "lapsing": {"description": "bought before, nothing in 30 days",
                   "when": {"all": [{"field": "counts.purchase", "op": ">=", "value": 1},
                                    {"since": "last_purchase_ms", "op": ">=", "value": "30d"}]}}},
     "rfm": {"recency_days": [2, 4, 7, 10], "frequency": [1, 1, 1, 2],
             "monetary": [65.36, 136.84, 298.08, 879.32]}}

Time. Every evaluation takes ``now_ms``, an *event* time: the flow passes the user's event
time on events and a stream event-time clock for quiet users, never the wall clock, so a
replay makes the same transitions at the same times. It is clamped to the user's newest event
(``last_seen_ms``): memberships never go back in time. Window counts are valued as of
``now_ms`` (:func:`~operators.profile.windows.count_as_of`): a quiet user's cart leaves the 24h
window
as time passes. :func:`next_check_ms` says when, without the user acting, a membership or the
RFM score could next change (a ``since`` crossing its duration, the oldest relevant bucket
leaving a window, the recency days crossing a cut); the flow evaluates exactly then.

The package: :mod:`~operators.apps.segments.conditions` (the condition language, compiled),
:mod:`~operators.apps.segments.rfm` (RFM scores and groups) and
:mod:`~operators.apps.segments.memberships` (evaluating them on a profile, the transitions,
when to look again).

>>> from operators.ingest import Event
>>> from operators.profile import ProfileParams, apply_event
>>> book = parse_segment_book('''{"segments": {"cart_abandoners": {
...     "description": "carted in the last day, bought nothing",
...     "when": {"all": [{"count": "add_to_cart", "window": "24h", "op": ">", "value": 0},
...                      {"count": "purchase", "window": "24h", "op": "==", "value": 0}]}}}}''')
>>> params, t0 = ProfileParams(), 1_717_200_000_000
>>> state, _ = apply_event(None, Event("e1", "u1", t0, "add_to_cart", item_id="i1"), None,
...                        params, dim=4)
>>> moves = update_memberships(state.profile, book, params.windows, t0, "e1")
>>> [(m.segment, m.direction, m.event_time_ms - t0, m.event_id) for m in moves]
[('cart_abandoners', 'enter', 0, 'e1')]
>>> later = next_check_ms(book, state.profile, params.windows, t0)
>>> later - t0  # the cart leaves the 24h window
86400000
>>> moves = update_memberships(state.profile, book, params.windows, later, None)
>>> [(m.segment, m.direction, m.event_time_ms - t0, m.event_id) for m in moves]
[('cart_abandoners', 'exit', 86400000, None)]
>>> next_check_ms(book, state.profile, params.windows, later) is None
True
"""

from operators.apps.segments.conditions import (
    BUNDLED_SEGMENTS,
    Segment,
    SegmentBook,
    load_segment_book,
    parse_segment_book,
)
from operators.apps.segments.memberships import (
    SegmentTransition,
    catch_up,
    evaluate,
    exit_all,
    memberships_from_transitions,
    next_check_ms,
    transition_id,
    update_memberships,
)
from operators.apps.segments.rfm import (
    RFM_GROUPS,
    RFM_PREFIX,
    RfmCuts,
    profile_rfm,
    rfm_cut_points,
    rfm_group,
    rfm_score,
)

__all__ = [
    "BUNDLED_SEGMENTS",
    "RFM_GROUPS",
    "RFM_PREFIX",
    "RfmCuts",
    "Segment",
    "SegmentBook",
    "SegmentTransition",
    "catch_up",
    "evaluate",
    "exit_all",
    "load_segment_book",
    "memberships_from_transitions",
    "next_check_ms",
    "parse_segment_book",
    "profile_rfm",
    "rfm_cut_points",
    "rfm_group",
    "rfm_score",
    "transition_id",
    "update_memberships",
]
