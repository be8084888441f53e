"""The consumer side: materialising profiles from deltas, replays, gaps and deletions."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from operators.profile import (
    Applied,
    DeltaKind,
    ProfileDelta,
    ProfileView,
    apply_patch,
    decode_vector,
    delta_from_json,
    delta_to_json,
    encode_vector,
    materialize,
    patch_between,
)


def delta(
    kind: DeltaKind, version: int, incarnation: str, base: int = 0, **vectors: Any
) -> ProfileDelta:
    """A delta of user "u" whose ``spend`` field records its version."""
    changed = {} if kind == "tombstone" else {"spend": float(version)}
    return ProfileDelta(
        "u", version, kind, incarnation, version, [f"x{version}"], "m", base, changed, **vectors
    )


def full(version: int, incarnation: str = "e1", vector: float = 0.5) -> ProfileDelta:
    return delta("full", version, incarnation, interest=encode_vector(np.full(3, vector, "f4")))


def patch(version: int, base: int, incarnation: str = "e1", vector: float = 0.25) -> ProfileDelta:
    return delta("patch", version, incarnation, base, interest=encode_vector(np.full(3, vector)))


def tombstone(version: int, incarnation: str = "e1") -> ProfileDelta:
    return delta("tombstone", version, incarnation)


@pytest.mark.parametrize("scale", [0.0, 1e-4, 0.05, 0.5, 3.0])
def test_vectors_travel_exactly_in_two_bytes_a_component(scale: float) -> None:
    rng = np.random.default_rng(0)
    vector = (rng.standard_normal(384) * scale).astype(np.float16)
    text = encode_vector(vector)
    assert np.array_equal(decode_vector(text), vector)
    assert len(text) == 1024  # 768 bytes of base64


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("scale", [1e-4, 0.05, 0.5, 3.0])
def test_int8_vectors_keep_direction_and_each_value_within_half_a_step(scale: float) -> None:
    rng = np.random.default_rng(1)
    # Dense vectors, like the profiles' means of embeddings, keep their direction closely;
    # where a few components dominate, the smallest fall below one step and are lost.
    shapes = {
        "normal": (rng.standard_normal((200, 384)), 0.9999),
        "cauchy": (np.clip(rng.standard_cauchy((200, 384)), -1e3, 1e3), 0.998),
        "spiky": (rng.standard_normal((200, 384)) * 0.01 + np.eye(200, 384) * 5, 0.999),
    }
    for vectors, cosine in shapes.values():
        for vector in (vectors * scale).astype(np.float16):
            text = encode_vector(vector, "int8")
            assert text.startswith("q8:") and len(text) == 3 + 520  # 388 bytes of base64
            decoded, exact = decode_vector(text), vector.astype(np.float32)
            step = np.abs(exact).max() / 127
            assert np.abs(decoded - exact).max() <= step / 2 * 1.001
            assert _cosine(decoded, exact) > cosine


def test_int8_zero_vector_decodes_to_zeros() -> None:
    assert not decode_vector(encode_vector(np.zeros(4, np.float16), "int8")).any()


def test_consumers_read_either_encoding() -> None:
    vector = np.array([0.25, -0.5, 1.0], np.float16)
    first = delta("full", 1, "e1", interest=encode_vector(vector, "int8"))
    second = delta("patch", 2, "e1", 1, interest=encode_vector(vector * 2, "float16"))
    view = ProfileView()
    view.apply(first)
    assert np.allclose(view.profiles["u"].interest, vector, atol=1 / 127)
    view.apply(second)
    assert np.array_equal(view.profiles["u"].interest, vector * 2)


def test_json_round_trip() -> None:
    d = patch(2, 1)
    assert delta_from_json(delta_to_json(d)) == d


def test_patches_merge_maps_key_by_key_and_replace_the_rest() -> None:
    before = {"counts": {"view": 1, "click": 2}, "spend": 1.0, "windows": {"1h": {"n": 1, "m": 2}}}
    after = {"counts": {"view": 2}, "spend": 1.0, "windows": {"1h": {"n": 1}}}
    changed = patch_between(before, after)
    assert changed == {"counts": {"view": 2, "click": None}, "windows": {"1h": {"n": 1}}}
    fields = {k: dict(v) if isinstance(v, dict) else v for k, v in before.items()}
    apply_patch(fields, changed)
    assert fields == after  # a window's value is replaced whole, not merged


def test_a_patch_names_dropped_keys_in_one_order_whatever_order_they_came_in() -> None:
    """The same changes make the same bytes in every process: the dropped keys come from a
    set, whose order follows the strings' hashes, which differ between processes."""
    before = {"brand_affinity": {"b": 1.0, "z": 2.0}}
    after = {"brand_affinity": {"a": 1.0}}
    dropped = [("brand_affinity", k) for k in ("z", "c", "y", "b")]
    patches = {
        json.dumps(patch_between(before, after, order)) for order in (dropped, dropped[::-1])
    }
    assert len(patches) == 1


def test_replayed_versions_are_ignored() -> None:
    view = ProfileView()
    stream = [full(1), patch(3, 1), patch(4, 3), patch(3, 1), patch(4, 3), patch(6, 4, vector=0.75)]
    results = [view.apply(d) for d in stream]
    assert results == ["applied", "applied", "applied", "stale", "stale", "applied"]
    profile = view.profiles["u"]
    assert profile.version == 6
    assert profile.fields == {"spend": 6.0}
    assert np.allclose(profile.interest, 0.75)


def test_a_patch_applies_to_any_version_from_its_base_up() -> None:
    view = ProfileView()
    view.apply(full(1))
    view.apply(patch(4, 1))
    # resent after a restart with other boundaries: from version 2 to 6, over our 4
    assert view.apply(patch(6, 2, vector=0.125)) is Applied.APPLIED
    assert view.profiles["u"].version == 6 and np.allclose(view.profiles["u"].interest, 0.125)


def test_gap_waits_for_the_next_full_delta() -> None:
    view = ProfileView()
    assert view.apply(patch(5, 4)) is Applied.GAP
    assert "u" not in view.profiles
    view.apply(full(1))
    assert view.apply(patch(4, 3)) is Applied.GAP  # events 2 and 3 are missing
    assert view.apply(full(4, vector=0.5)) is Applied.APPLIED
    assert view.apply(patch(5, 4)) is Applied.APPLIED
    assert np.allclose(view.profiles["u"].interest, 0.25)


def test_tombstone_erases_and_a_new_incarnation_starts_fresh() -> None:
    stream = [full(1), patch(2, 1), tombstone(3), patch(2, 1), full(1, "e9", vector=0.5)]
    profiles = materialize(stream)
    assert profiles["u"].incarnation == "e9"
    assert np.allclose(profiles["u"].interest, 0.5)
    # a replay of the deleted incarnation's deltas must not resurrect it
    assert materialize([*stream, full(1), patch(2, 1)])["u"].incarnation == "e9"
    assert "u" not in materialize([full(1), tombstone(2)])
    # a second delete of an unknown profile must not let a replay resurrect the first
    again = [full(1), tombstone(2), tombstone(1, incarnation=""), full(1), patch(2, 1)]
    assert "u" not in materialize(again)


def test_materialize_accepts_json_lines() -> None:
    assert materialize([delta_to_json(full(1)).decode()])["u"].fields == {"spend": 1.0}
