"""The user's item memory: what the profile keeps for whichever item model reads it.

The profile core owns the shape of this per-user state (the newest items and a sparse
long-term attribute vector) and publishes it as plain fields; the item model that updates
it and ranks items from it lives above the core (:mod:`operators.recsys.item_model`) and
plugs in through :class:`ItemMemoryModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec


class UserItemMemory(msgspec.Struct, array_like=True):
    """A user's bounded state: the newest events and a sparse long-term attribute vector.

    ``long_term`` holds sums, ``sum_i w_i P(attribute | item_i)``, and ``long_term_weight``
    the total ``W = sum_i w_i``; the vector the scorer uses is their ratio
    (:meth:`long_term_vector`). Keeping sums rather than the mean means an event changes only
    its item's attributes, so a delta carries a few numbers instead of the whole vector.
    ``seen`` counts the events folded in; it numbers ``recent`` in deltas.
    """

    model_version: str
    recent: list[tuple[str, str, int]] = []  # (item, type, ts_ms), oldest first
    long_term: dict[int, float] = {}  # attribute index -> summed weight
    long_term_weight: float = 0.0
    seen: int = 0

    def long_term_vector(self) -> dict[int, float]:
        """The weighted mean attribute distribution of the user's items."""
        if self.long_term_weight <= 0:
            return {}
        return {a: s / self.long_term_weight for a, s in self.long_term.items()}


def memory_fields(memory: UserItemMemory) -> dict[str, Any]:
    """The memory as the public profile fields deltas carry (maps merge key by key).

    ``item_recent`` maps each recent event's sequence number to ``[item, type, ts_ms]``.
    """
    first = memory.seen - len(memory.recent)
    return {
        "item_model_version": memory.model_version,
        "item_recent": {str(first + k): list(r) for k, r in enumerate(memory.recent)},
        "item_long_term": {str(a): w for a, w in memory.long_term.items()},
        "item_weight": memory.long_term_weight,
    }


def memory_from_fields(fields: Mapping[str, Any]) -> UserItemMemory | None:
    """Inverse of :func:`memory_fields`, from a materialised profile (``None`` if it has none)."""
    if "item_model_version" not in fields:
        return None
    recent = sorted(fields["item_recent"].items(), key=lambda kv: int(kv[0]))
    return UserItemMemory(
        model_version=fields["item_model_version"],
        recent=[(str(i), str(t), int(ts)) for _, (i, t, ts) in recent],
        long_term={int(a): float(w) for a, w in fields["item_long_term"].items()},
        long_term_weight=float(fields["item_weight"]),
        seen=int(recent[-1][0]) + 1 if recent else 0,
    )


class ItemMemoryModel(Protocol):
    """What the profile step needs of an item model: its version, and one event folded into
    a user's memory (a new memory; the old one is not modified). Attributes the memory lets
    go are added to ``evicted``."""

    @property
    def version(self) -> str: ...

    def remember(
        self,
        memory: UserItemMemory | None,
        item_id: str,
        event_type: str,
        ts_ms: int,
        evicted: set[str] | None = None,
    ) -> UserItemMemory: ...
