"""The per-user profile and the pure step that updates it with one event.

``apply_event(state, event, vector, params, now_ms) -> (state, outputs)`` is the whole
stateful logic of a user: de-duplicate by event id, update counts, spend, time-decayed
category/brand affinities and keywords, the decayed mean sentiment of the user's reviews and
complaints (overall and per category), take one online SGD step on the interest vector, and
emit a
:class:`~operators.deltas.ProfileDelta`. Returning ``None`` as the state erases the user
(``delete_user``). It knows nothing of Bytewax, so it is tested and reused (reference
computations, replays) as a plain function.

The interest vector ``u`` minimises the time-decayed, type-weighted squared distance to the
vectors of the user's events, ``sum_i w_i d(t - t_i) |u - x_i|^2``. Each event takes the SGD
step ``u += lr * (x - u)`` with ``lr = w / W``, where ``W`` is the decayed total weight seen so
far; this is the exact online minimiser, so the vector forgets old interests at the chosen
half-life and needs no tuning of a learning-rate schedule.

>>> import numpy as np
>>> from operators.events import Event
>>> params = ProfileParams()
>>> view = Event("e1", "u1", 1_700_000_000_000, "view", item_id="i1", category="shoes")
>>> state, out = apply_event(None, view, np.ones(4, np.float32), params, now_ms=0)
>>> state.profile.version, state.profile.counts, out[0].kind
(1, {'view': 1}, 'full')
>>> state, out = apply_event(state, view, np.ones(4, np.float32), params, now_ms=0)
>>> out[0].reason
'duplicate_event'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from operators.deltas import ProfileDelta, encode_vector
from operators.events import DeadLetter, Event, duplicate_of
from operators.item_model import ItemModel, UserItemMemory, update_memory
from operators.nlp import TextSignals

DAY_MS = 86_400_000

#: How strongly each event type says "this user is interested in this": buying says more
#: than looking. Types with weight 0 (login, refund, ...) only update counters.
DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "search": 1.0,
        "view": 0.5,
        "click": 1.0,
        "ad_click": 0.5,
        "share": 1.5,
        "favorite": 2.0,
        "add_to_cart": 2.0,
        "review": 2.5,
        "purchase": 4.0,
        "remove_from_cart": 0.0,
        "refund": 0.0,
        "login": 0.0,
        "logout": 0.0,
    }
)


@dataclass(frozen=True)
class ProfileParams:
    """The knobs of the profile model; changing any of them is a new ``model_version``."""

    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    interest_half_life_ms: int = 14 * DAY_MS
    affinity_half_life_ms: int = 30 * DAY_MS
    max_affinities: int = 32
    max_keywords: int = 32
    max_seen_event_ids: int = 512
    full_every: int = 100
    model_version: str = "profile-v1"

    def moves_interest(self, event: Event) -> bool:
        """Whether this event's vector changes the interest vector (its type has weight)."""
        return self.type_weights.get(event.type, 0.0) > 0.0


@dataclass
class UserProfile:
    """What we know of one user; everything but the vector is published as plain fields.

    Affinities, keywords and the weights are expressed as of ``last_seen_ms`` (the latest
    event time seen), so a reader decays them further to its own clock if it needs to.
    ``sentiment`` is the decayed mean polarity (-1 to 1) of the user's opinions, of total
    weight ``sentiment_weight``; ``category_sentiment`` maps a category to (mean, weight).
    ``item_memory`` is the user's state in the item model (recent items, long-term vector):
    what :func:`operators.recommend.recommend` ranks items from.
    """

    user_id: str
    incarnation: str
    version: int
    model_version: str
    interest: np.ndarray
    interest_weight: float = 0.0
    category_affinity: dict[str, float] = field(default_factory=dict)
    brand_affinity: dict[str, float] = field(default_factory=dict)
    keywords: dict[str, float] = field(default_factory=dict)
    sentiment: float = 0.0
    sentiment_weight: float = 0.0
    category_sentiment: dict[str, tuple[float, float]] = field(default_factory=dict)
    item_memory: UserItemMemory | None = None
    counts: dict[str, int] = field(default_factory=dict)
    spend: float = 0.0
    refunded: float = 0.0
    first_seen_ms: int = 0
    last_seen_ms: int = 0

    def public_fields(self) -> dict[str, Any]:
        """The fields a delta carries (copies, so later updates cannot alias them)."""
        return {
            "interest_weight": self.interest_weight,
            "category_affinity": dict(self.category_affinity),
            "brand_affinity": dict(self.brand_affinity),
            "keywords": dict(self.keywords),
            "sentiment": self.sentiment,
            "sentiment_weight": self.sentiment_weight,
            "category_sentiment": {k: list(v) for k, v in self.category_sentiment.items()},
            "item_memory": self.item_memory.to_dict() if self.item_memory else None,
            "counts": dict(self.counts),
            "spend": self.spend,
            "refunded": self.refunded,
            "first_seen_ms": self.first_seen_ms,
            "last_seen_ms": self.last_seen_ms,
        }


@dataclass
class UserState:
    """A user's profile plus the recent event ids used to drop duplicates (bounded)."""

    profile: UserProfile
    seen_event_ids: dict[str, None] = field(default_factory=dict)


def decay(elapsed_ms: int, half_life_ms: int) -> float:
    """Weight left after ``elapsed_ms`` with the given half-life.

    >>> decay(0, 10), decay(10, 10), decay(20, 10)
    (1.0, 0.5, 0.25)
    """
    return math.pow(0.5, elapsed_ms / half_life_ms)


def add_decayed(
    scores: dict[str, float], added: Mapping[str, float], shrink: float, capacity: int
) -> dict[str, float]:
    """Multiply every score by ``shrink``, add the ``added`` weights, keep the top ``capacity``.

    >>> add_decayed({"a": 2.0, "b": 1.0}, {"c": 3.0}, 0.5, capacity=2)
    {'c': 3.0, 'a': 1.0}
    """
    updated = {k: v * shrink for k, v in scores.items()}
    for key, weight in added.items():
        updated[key] = updated.get(key, 0.0) + weight
    if len(updated) > capacity:
        updated = dict(sorted(updated.items(), key=lambda kv: kv[1], reverse=True)[:capacity])
    return updated


def sgd_step(
    interest: np.ndarray, total_weight: float, target: np.ndarray, weight: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """One SGD step of the interest vector towards ``target``; returns (vector, weight, delta).

    The delta is float32 and the new vector is ``interest + delta`` computed in float32, so a
    consumer adding the same delta gets the same bits.

    >>> v, w, d = sgd_step(np.zeros(2, np.float32), 0.0, np.array([1, 3], np.float32), 2.0)
    >>> v.tolist(), w
    ([1.0, 3.0], 2.0)
    >>> v, w, d = sgd_step(v, w, np.array([3, 3], np.float32), 2.0)
    >>> v.tolist(), w
    ([2.0, 3.0], 4.0)
    """
    new_weight = total_weight + weight
    lr = np.float32(weight / new_weight)
    delta = (lr * (target - interest)).astype(np.float32)
    return (interest + delta).astype(np.float32), new_weight, delta


def model_version(params: ProfileParams, items: ItemModel | None) -> str:
    """The versions a profile is built with: the profile model's and the item model's.

    >>> model_version(ProfileParams(model_version="minilm+profile-v1"), None)
    'minilm+profile-v1'
    """
    return (
        params.model_version if items is None else f"{params.model_version}+items-{items.version}"
    )


def incarnation_of(event: Event) -> str:
    """Name a profile after the event that created it, and where that event was read.

    The origin (Kafka ``topic/partition/offset`` or ``file:offset``) is stable across
    replays, and it tells a profile re-created after ``delete_user`` apart from the deleted
    one even when a late re-send repeats the very event that created the first.

    >>> incarnation_of(Event("e1", "u", 1, "login", source="events/0/17"))
    'e1@events/0/17'
    """
    return f"{event.event_id}@{event.source}" if event.source else event.event_id


def new_profile(event: Event, dim: int, params: ProfileParams) -> UserProfile:
    return UserProfile(
        user_id=event.user_id,
        incarnation=incarnation_of(event),
        version=0,
        model_version=params.model_version,
        interest=np.zeros(dim, dtype=np.float32),
        first_seen_ms=event.ts_ms,
        last_seen_ms=event.ts_ms,
    )


def add_to_mean(
    mean: float, weight: float, value: float, value_weight: float, shrink: float
) -> tuple[float, float]:
    """Fold ``value`` into a decayed weighted mean; returns (mean, total weight).

    >>> add_to_mean(1.0, 1.0, -1.0, 1.0, shrink=1.0)
    (0.0, 2.0)
    >>> add_to_mean(1.0, 2.0, -1.0, 1.0, shrink=0.5)
    (0.0, 2.0)
    """
    kept = weight * shrink
    total = kept + value_weight
    return (mean * kept + value * value_weight) / total, total


def _update_opinion(
    profile: UserProfile,
    category: str | None,
    polarity: float,
    weight: float,
    shrink: float,
    capacity: int,
) -> None:
    profile.sentiment, profile.sentiment_weight = add_to_mean(
        profile.sentiment, profile.sentiment_weight, polarity, weight, shrink
    )
    by_category = {k: (m, w * shrink) for k, (m, w) in profile.category_sentiment.items()}
    if category is not None:
        mean, total = by_category.get(category, (0.0, 0.0))
        by_category[category] = add_to_mean(mean, total, polarity, weight, 1.0)
    if len(by_category) > capacity:
        by_category = dict(sorted(by_category.items(), key=lambda kv: -kv[1][1])[:capacity])
    profile.category_sentiment = by_category


def _update(
    profile: UserProfile,
    event: Event,
    vector: np.ndarray | None,
    signals: TextSignals | None,
    params: ProfileParams,
    items: ItemModel | None,
) -> np.ndarray | None:
    """Fold ``event`` into ``profile`` in place; return the interest delta, if any."""
    # Values are kept "as of last_seen_ms": a newer event decays the past, a late one is
    # discounted by how late it is.
    elapsed = event.ts_ms - profile.last_seen_ms
    ahead, behind = max(elapsed, 0), max(-elapsed, 0)
    profile.last_seen_ms = max(profile.last_seen_ms, event.ts_ms)
    profile.first_seen_ms = min(profile.first_seen_ms, event.ts_ms)
    profile.counts[event.type] = profile.counts.get(event.type, 0) + 1
    if event.type == "purchase" and event.price is not None:
        profile.spend += event.price * event.quantity
    elif event.type == "refund" and event.price is not None:
        profile.refunded += event.price * event.quantity
    profile.model_version = model_version(params, items)

    aff_shrink = decay(ahead, params.affinity_half_life_ms)
    lateness = decay(behind, params.affinity_half_life_ms)
    if signals is not None and signals.polarity is not None:
        _update_opinion(
            profile,
            event.category,
            signals.polarity,
            lateness,
            aff_shrink,
            params.max_affinities,
        )
    weight = params.type_weights.get(event.type, 0.0)
    if weight <= 0.0:
        return None
    aff_weight = weight * lateness
    for scores_name, key in (
        ("category_affinity", event.category),
        ("brand_affinity", event.brand),
    ):
        if key is not None:
            scores = add_decayed(
                getattr(profile, scores_name),
                {key: aff_weight},
                aff_shrink,
                params.max_affinities,
            )
            setattr(profile, scores_name, scores)
    if signals is not None and signals.keywords:
        profile.keywords = add_decayed(
            profile.keywords,
            {word: aff_weight * share for word, share in signals.keywords},
            aff_shrink,
            params.max_keywords,
        )
    if items is not None and event.item_id is not None:
        profile.item_memory = update_memory(
            profile.item_memory, items, event.item_id, event.type, event.ts_ms
        )
    if vector is None:
        return None
    total = profile.interest_weight * decay(ahead, params.interest_half_life_ms)
    step_weight = weight * decay(behind, params.interest_half_life_ms)
    profile.interest, profile.interest_weight, delta = sgd_step(
        profile.interest, total, vector, step_weight
    )
    return delta


def apply_event(
    state: UserState | None,
    event: Event,
    vector: np.ndarray | None,
    params: ProfileParams,
    now_ms: int,
    dim: int | None = None,
    signals: TextSignals | None = None,
    items: ItemModel | None = None,
) -> tuple[UserState | None, list[ProfileDelta | DeadLetter]]:
    """Apply one event of a user; return the new state (``None`` = erased) and what to emit.

    ``vector`` is the event's embedding (see :func:`operators.embedding.embedding_text`) or
    ``None``; ``dim`` sizes the interest vector of a new user when ``vector`` is ``None``;
    ``signals`` are what its text says (:func:`operators.nlp.read_text`); ``items`` is the
    item model whose per-user memory item events update (see :mod:`operators.item_model`).
    """
    if event.type == "delete_user":
        incarnation = state.profile.incarnation if state is not None else ""
        version = state.profile.version + 1 if state is not None else 1
        tombstone = ProfileDelta(
            event.user_id,
            version,
            "tombstone",
            incarnation,
            event.ts_ms,
            [event.event_id],
            params.model_version,
            ingest_ms=event.ingest_ms,
            processed_ms=now_ms,
        )
        return None, [tombstone]
    if state is not None and event.event_id in state.seen_event_ids:
        return state, [duplicate_of(event)]
    if state is None:
        size = dim if vector is None else len(vector)
        if size is None:
            raise ValueError("a new profile needs `dim` when the event has no vector")
        state = UserState(new_profile(event, size, params))
    state.seen_event_ids[event.event_id] = None
    if len(state.seen_event_ids) > params.max_seen_event_ids:
        del state.seen_event_ids[next(iter(state.seen_event_ids))]

    profile = state.profile
    before = profile.public_fields()
    interest_delta = _update(profile, event, vector, signals, params, items)
    profile.version += 1
    after = profile.public_fields()
    full = profile.version == 1 or profile.version % params.full_every == 0
    delta = ProfileDelta(
        user_id=profile.user_id,
        version=profile.version,
        kind="full" if full else "patch",
        incarnation=profile.incarnation,
        event_time_ms=event.ts_ms,
        event_ids=[event.event_id],
        model_version=profile.model_version,
        changed=after if full else {k: v for k, v in after.items() if before[k] != v},
        interest=encode_vector(profile.interest) if full else None,
        interest_delta=(
            encode_vector(interest_delta) if not full and interest_delta is not None else None
        ),
        ingest_ms=event.ingest_ms,
        processed_ms=now_ms,
    )
    return state, [delta]
