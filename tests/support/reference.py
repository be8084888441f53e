"""Reference profiles from the pure user machine alone, to check the dataflow against."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from operators.apps import Applications, RiskParams
from operators.apps.segments import SegmentBook, load_segment_book
from operators.ingest import Event, parse_event
from operators.profile import (
    MaterializedProfile,
    ProfileParams,
    UserState,
    decode_vector,
    encode_vector,
    public_fields,
)
from operators.profile.deltas import VectorEncoding
from operators.recsys import ItemVectors
from operators.text import SentimentScorer
from operators.text.embedding import TextEncoder
from operators.user import MachineSettings, Ports, UserMachine, vector_of


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
    """Fold every valid line, in input order, into per-user state with the flow's own
    :class:`~operators.user.UserMachine`, one event at a time, with every text embedded up
    front (no batching, no Bytewax, no wall clock: no delta falls due before the end); at the
    end of the input, every check due by ``end_ms`` runs: by default the newest event time,
    as a flow that reaches the end of its input does; a tailing flow, whose timers go by the
    watermark, gets there at the newest event time less the allowed lateness.

    Events about items in ``items`` (no typed text of their own) take the item's vector.
    """
    apps = Applications(
        segments or load_segment_book(None, windows=params.windows), params.windows, RiskParams()
    )
    events = [e for e in (parse_event(line) for line in lines) if isinstance(e, Event)]
    catalog = _Catalog(items)
    settings = MachineSettings(
        params,
        lambda: apps,
        dim=encoder.dim,
        emit_interval_ms=_NEVER,  # the state stays live, at full precision
        keywords_per_text=keywords_per_text,
        prompts=encoder.prompts,
    )
    texts = sorted({t for e in events if (t := vector_of(settings, catalog, e)[1]) is not None})
    vectors = dict(zip(texts, encoder.encode(texts), strict=True)) if texts else {}
    ports = Ports(vectors=_Embedded(vectors), sentiment=sentiment, catalog=catalog)
    machines: dict[str, UserMachine] = {}
    for event in events:
        machine = machines.get(event.user_id)
        if machine is None:
            machine = machines[event.user_id] = UserMachine(settings, ports)
        machine.receive([event], now_ms=0)
    end = max((e.ts_ms for e in events), default=0) if end_ms is None else end_ms
    for machine in machines.values():
        machine.on_time(now_ms=0, watermark_ms=end)
    return {user: m.state for user, m in machines.items() if m.state is not None}


_NEVER = 2**62


class _Embedded:
    """Every text's vector, ready: what the batcher answers once its batches are done."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def vector(self, text: str, now_ms: int) -> np.ndarray | None:
        return self.vectors[text]

    def due_ms(self, now_ms: int = 0) -> int | None:
        return None


class _Catalog:
    def __init__(self, items: ItemVectors | None) -> None:
        self.items = items

    def current(self) -> ItemVectors | None:
        return self.items


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
    """Same users, versions and fields exactly; interest vectors within ``atol`` of the
    reference's as the deltas encode it.

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
        # What the deltas' encoding of the reference's vector carries (int8: not the bits).
        carried = decode_vector(encode_vector(state.profile.interest, params.vector_encoding))
        tolerance = vector_atol(carried, atol, params.vector_encoding)
        assert np.allclose(got.interest, carried, atol=tolerance, rtol=0), user


def vector_atol(vector: np.ndarray, atol: float, encoding: VectorEncoding) -> float:
    """``atol`` between two runs' vectors, widened by what the deltas' encoding adds: two
    vectors ``atol`` apart may round to neighbouring int8 codes, one step (largest / 127)."""
    if encoding == "float16" or atol == 0:
        return atol
    return atol + 1.01 * float(np.abs(vector).max()) / 127
