"""What a profile publishes: its fields as deltas carry them."""

from __future__ import annotations

from typing import Any

from operators.profile.items import memory_fields
from operators.profile.state import ProfileParams, UserProfile
from operators.profile.windows import result as window_results


def profile_fields(profile: UserProfile) -> dict[str, Any]:
    """The published fields but the windows, unrounded: what a patch is computed from.

    Maps are copies, so later events cannot change what this captured.
    """
    fields: dict[str, Any] = {
        "anchor_ms": profile.anchor_ms,
        "interest_weight": profile.interest_weight,
        "category_affinity": dict(profile.category_affinity),
        "brand_affinity": dict(profile.brand_affinity),
        "keywords": dict(profile.keywords),
        "sentiment": profile.sentiment,
        "sentiment_weight": profile.sentiment_weight,
        "category_sentiment": dict(profile.category_sentiment),
        "counts": dict(profile.counts),
        "spend": profile.spend,
        "refunded": profile.refunded,
        "first_seen_ms": profile.first_seen_ms,
        "last_seen_ms": profile.last_seen_ms,
        "last_purchase_ms": profile.last_purchase_ms,
        "segments": dict(profile.segments),
        "rfm": profile.rfm,
    }
    if profile.item_memory is not None:
        fields.update(memory_fields(profile.item_memory))
    return fields


def rounded(value: Any) -> Any:
    """``value`` as deltas carry it: floats to 6 decimals, tuples as lists, recursively.

    >>> rounded({"a": 1 / 3, "b": (2 / 3, 1), "c": None})
    {'a': 0.333333, 'b': [0.666667, 1], 'c': None}
    """
    kind = type(value)
    if kind is float:
        return round(value, 6)
    if kind is dict:  # mostly maps of floats: spare them the recursive call
        return {k: round(v, 6) if type(v) is float else rounded(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [rounded(v) for v in value]
    return value


def window_fields(profile: UserProfile, params: ProfileParams) -> dict[str, Any]:
    """The ``windows`` field: every span's aggregates as of the newest event."""
    return window_results(profile.windows, params.windows)


def public_fields(profile: UserProfile, params: ProfileParams) -> dict[str, Any]:
    """Every field a full delta carries, as plain JSON values (weights to 6 decimals)."""
    return {**rounded(profile_fields(profile)), "windows": window_fields(profile, params)}
