"""The consumer side: materialising profiles from deltas, replays, gaps and deletions."""

from __future__ import annotations

import numpy as np

from operators.deltas import (
    Applied,
    DeltaKind,
    ProfileDelta,
    ProfileView,
    decode_vector,
    delta_from_json,
    delta_to_json,
    encode_vector,
    materialize,
)


def delta(kind: DeltaKind, version: int, incarnation: str, **vectors: str) -> ProfileDelta:
    """A delta of user "u" whose ``spend`` field records its version."""
    changed = {} if kind == "tombstone" else {"spend": float(version)}
    return ProfileDelta(
        "u", version, kind, incarnation, version, [f"x{version}"], "m", changed=changed, **vectors
    )


def full(version: int, incarnation: str = "e1", vector: float = 1.0) -> ProfileDelta:
    return delta("full", version, incarnation, interest=encode_vector(np.full(3, vector, "f4")))


def patch(version: int, incarnation: str = "e1", step: float = 0.25) -> ProfileDelta:
    move = encode_vector(np.full(3, step, "f4"))
    return delta("patch", version, incarnation, interest_delta=move)


def tombstone(version: int, incarnation: str = "e1") -> ProfileDelta:
    return delta("tombstone", version, incarnation)


def test_vector_encoding_is_exact() -> None:
    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    assert np.array_equal(decode_vector(encode_vector(vector)), vector)


def test_json_round_trip() -> None:
    delta = patch(2)
    assert delta_from_json(delta_to_json(delta)) == delta


def test_replayed_versions_are_ignored() -> None:
    view = ProfileView()
    results = [view.apply(d) for d in [full(1), patch(2), patch(3), patch(2), patch(3), patch(4)]]
    assert results == ["applied", "applied", "applied", "stale", "stale", "applied"]
    profile = view.profiles["u"]
    assert profile.version == 4
    assert profile.fields == {"spend": 4.0}
    assert np.allclose(profile.interest, 1.75)


def test_gap_waits_for_the_next_full_delta() -> None:
    view = ProfileView()
    assert view.apply(patch(5)) is Applied.GAP
    assert "u" not in view.profiles
    view.apply(full(1))
    assert view.apply(patch(3)) is Applied.GAP
    assert view.apply(full(4, vector=2.0)) is Applied.APPLIED
    assert view.apply(patch(5)) is Applied.APPLIED
    assert np.allclose(view.profiles["u"].interest, 2.25)


def test_tombstone_erases_and_a_new_incarnation_starts_fresh() -> None:
    stream = [full(1), patch(2), tombstone(3), patch(2), full(1, incarnation="e9", vector=5.0)]
    profiles = materialize(stream)
    assert profiles["u"].incarnation == "e9"
    assert np.allclose(profiles["u"].interest, 5.0)
    # a replay of the deleted incarnation's deltas must not resurrect it
    assert materialize([*stream, full(1), patch(2)])["u"].incarnation == "e9"
    assert "u" not in materialize([full(1), tombstone(2)])
    # a second delete of an unknown profile must not let a replay resurrect the first
    again = [full(1), tombstone(2), tombstone(1, incarnation=""), full(1), patch(2)]
    assert "u" not in materialize(again)


def test_materialize_accepts_json_lines() -> None:
    assert materialize([delta_to_json(full(1)).decode()])["u"].fields == {"spend": 1.0}
