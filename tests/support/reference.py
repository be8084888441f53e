"""Reference profiles computed by the pure functions alone, to check the dataflow against."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from operators.apps import Applications, RiskParams, after_event, before_event
from operators.apps.segments import SegmentBook, load_segment_book
from operators.ingest import Event, parse_event
from operators.profile import (
    MaterializedProfile,
    Outcome,
    ProfileParams,
    UserState,
    apply_event,
    public_fields,
)
from operators.recsys import ItemVectors
from operators.text import SentimentScorer, read_text
from operators.text.embedding import TextEncoder, embedding_text, typed_text


def reference_states(
    lines: Iterable[bytes | str],
    encoder: TextEncoder,
    params: ProfileParams,
    sentiment: SentimentScorer,
    keywords_per_text: int = 5,
    items: ItemVectors | None = None,
    segments: SegmentBook | None = None,
    end_ms: int | None = None,
) -> dict[str, UserState]:
    """Fold every valid line, in order, into per-user state as the flow's user step does:
    due segment checks, ``apply_event``, then the applications (:mod:`operators.apps.user_step`);
    at the end of the input, every check due by ``end_ms`` runs: by default the newest event
    time, as a flow that reaches the end of its input does; a tailing flow, whose timers go by
    the watermark, gets there at the newest event time less the allowed lateness.

    Events about items in ``items`` (no typed text of their own) take the item's vector.
    """
    apps = Applications(
        segments or load_segment_book(None, windows=params.windows), params.windows, RiskParams()
    )
    events = [e for e in (parse_event(line) for line in lines) if isinstance(e, Event)]

    def catalog_vector(event: Event) -> np.ndarray | None:
        return items.get(event.item_id) if items is not None and typed_text(event) is None else None

    def text_of(event: Event) -> str | None:
        if not params.moves_interest(event) or catalog_vector(event) is not None:
            return None
        return embedding_text(event, encoder.prompts)

    texts = sorted({t for e in events if (t := text_of(e)) is not None})
    vectors = dict(zip(texts, encoder.encode(texts), strict=True)) if texts else {}
    states: dict[str, UserState] = {}
    due: dict[str, int] = {}
    erased: dict[str, int] = {}  # user -> newest event time at erasure: older re-sends refused
    for event in events:
        if event.ts_ms <= erased.get(event.user_id, -1):
            continue
        text = text_of(event)
        vector = vectors[text] if text is not None else catalog_vector(event)
        state = states.get(event.user_id)
        if state is not None:
            due[event.user_id] = before_event(state, apps, due.get(event.user_id, 0), event.ts_ms)[
                1
            ]
        new, outcome = apply_event(
            state,
            event,
            vector,
            params,
            dim=encoder.dim,
            signals=read_text(event, sentiment, keywords_per_text, vector),
        )
        if new is None:
            last = state.profile.last_seen_ms if state is not None else event.ts_ms
            erased[event.user_id] = max(last, event.ts_ms)
            states.pop(event.user_id, None)
            due.pop(event.user_id, None)
        elif outcome is not Outcome.DUPLICATE and outcome is not Outcome.UNVERIFIABLE:
            states[event.user_id] = new
            due[event.user_id] = after_event(new, event, apps)[2]
    end = max((e.ts_ms for e in events), default=0) if end_ms is None else end_ms
    for user, state in states.items():
        before_event(state, apps, due.get(user, 0), end)
    return states


#: What the clock alone changes: for a user with an event later than the allowed lateness,
#: these depend on whether a segment timer ran before that event arrived.
CLOCK_FIELDS = ("segments", "rfm")


def users_with_late_events(lines: Iterable[bytes | str], allowed_lateness_ms: int) -> set[str]:
    """Users with an event older than the stream's newest event time so far by more than the
    allowed lateness (in input order): a watermark-driven timer may have run before it."""
    newest, late = 0, set()
    for event in (parse_event(line) for line in lines):
        if isinstance(event, Event):
            if event.ts_ms < newest - allowed_lateness_ms:
                late.add(event.user_id)
            newest = max(newest, event.ts_ms)
    return late


def assert_profiles_match(
    materialized: dict[str, MaterializedProfile],
    reference: dict[str, UserState],
    params: ProfileParams,
    atol: float,
    late_users: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Same users, versions and fields exactly; interest vectors within ``atol``.

    For ``late_users`` (see :func:`users_with_late_events`) the version and the fields the
    clock changes may differ with the arrival order, as in any watermark-driven system;
    everything else must still be equal.
    """
    assert sorted(materialized) == sorted(reference)
    for user, state in reference.items():
        got = materialized[user]
        # The flow names incarnations "event_id@origin"; the reference parsed without origins.
        assert got.incarnation.split("@")[0] == state.profile.incarnation, user
        want = public_fields(state.profile, params)
        fields = got.fields
        if user in late_users:
            assert got.version >= sum(state.profile.counts.values()), user  # every event
            fields = {k: v for k, v in fields.items() if k not in CLOCK_FIELDS}
            want = {k: v for k, v in want.items() if k not in CLOCK_FIELDS}
        else:
            assert got.version == state.profile.version, user
        if fields != want:  # name the fields that differ, not just the user
            differ = {k: (fields.get(k), want.get(k)) for k in fields.keys() | want.keys()
                      if fields.get(k) != want.get(k)}  # fmt: skip
            raise AssertionError(f"{user}: {differ}")
        assert np.allclose(got.interest, state.profile.interest, atol=atol, rtol=0), user
