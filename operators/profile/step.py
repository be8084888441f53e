"""The pure step that folds one event into a user's profile.

``apply_event(state, event, vector, params) -> (state, outcome)`` is the whole stateful logic
of a user: drop duplicates by event id, update counts, spend, the windows
(:mod:`operators.profile.windows`), time-decayed category/brand affinities and keywords, the decayed
mean sentiment of reviews and complaints (overall and per category), the item memory, and
take one online SGD step on the interest vector. It returns ``None`` as the state when the
user asked to be deleted. When to publish what changed is :mod:`operators.profile.coalesce`'s job;
this module knows nothing of Bytewax, so it is tested and reused (reference computations,
replays) as a plain function.

The interest vector ``u`` minimises the time-decayed, type-weighted squared distance to the
vectors of the user's events, ``sum_i w_i d(t - t_i) |u - x_i|^2``. Each event takes the SGD
step ``u += lr * (x - u)`` with ``lr = w / W``, where ``W`` is the decayed total weight seen so
far; this is the exact online minimiser, so the vector forgets old interests at the chosen
half-life and needs no tuning of a learning-rate schedule. Each step is computed in float32
and the vector kept in float16 (relative precision 5e-4, half the memory), which deltas carry
exactly: consumers hold the very bits the profile has.

Decayed weights (affinities, keywords, the weights behind the vector and the sentiment) are
stored *as of* ``anchor_ms``: an event at ``t`` adds ``w * 2^((t - anchor_ms) / half_life)``.
Ranking by them is ranking by their value now, and an event changes only the keys it touches
-- not every key, as decaying everything to the newest event time would -- which keeps deltas
small. The anchor moves forward (rescaling every weight, and making the next delta full) once
the newest event is a half-life past it, so weights stay within 2x of their current value.
Their value at time ``t`` is ``weight * 2^-((t - anchor_ms) / half_life)``.

>>> import numpy as np
>>> from operators.ingest import Event
>>> params = ProfileParams()
>>> view = Event("e1", "u1", 1_700_000_000_000, "view", item_id="i1", category="shoes")
>>> state, outcome = apply_event(None, view, np.ones(4, np.float32), params)
>>> str(outcome), state.profile.version, state.profile.counts, state.profile.interest.tolist()
('applied', 1, {'view': 1}, [1.0, 1.0, 1.0, 1.0])
>>> str(apply_event(state, view, np.ones(4, np.float32), params)[1])
'duplicate'
"""

from __future__ import annotations

import numpy as np

from operators.ingest import Event
from operators.profile.items import ItemMemoryModel
from operators.profile.state import (
    Outcome,
    ProfileParams,
    UserProfile,
    UserState,
    event_key,
)
from operators.profile.windows import add as add_to_windows
from operators.profile.windows import initialize as new_windows
from operators.text import TextSignals


def decay(elapsed_ms: float, half_life_ms: float) -> float:
    """Weight left after ``elapsed_ms`` with the given half-life (negative: grows).

    >>> decay(0, 10), decay(10, 10), decay(-20, 10)
    (1.0, 0.5, 4.0)
    """
    return 0.5 ** (elapsed_ms / half_life_ms)


def add_weight(scores: dict[str, float], key: str, weight: float, capacity: int) -> str | None:
    """Add ``weight`` to ``key``; keep the ``capacity`` largest; return the key dropped, if any.

    >>> scores = {"a": 2.0, "b": 1.0}
    >>> add_weight(scores, "c", 3.0, capacity=2), scores
    ('b', {'a': 2.0, 'c': 3.0})
    """
    scores[key] = scores.get(key, 0.0) + weight
    if len(scores) <= capacity:
        return None
    smallest = min(scores, key=scores.__getitem__)
    del scores[smallest]
    return smallest


def sgd_step(
    interest: np.ndarray, total_weight: float, target: np.ndarray, weight: float
) -> tuple[np.ndarray, float]:
    """One SGD step of the float16 interest vector towards ``target``; (vector, weight).

    >>> v, w = sgd_step(np.zeros(2, np.float16), 0.0, np.array([1, 3], np.float32), 2.0)
    >>> v.tolist(), w
    ([1.0, 3.0], 2.0)
    >>> v, w = sgd_step(v, w, np.array([3, 3], np.float32), 2.0)
    >>> v.tolist(), w
    ([2.0, 3.0], 4.0)
    """
    new_weight = total_weight + weight
    if new_weight <= 0.0:  # an event so old its decayed weight underflowed: it moves nothing
        return interest, total_weight
    moved = target - interest  # float32
    moved *= weight / new_weight  # a Python float keeps the float32 array float32
    moved += interest
    return moved.astype(np.float16), new_weight


def add_to_mean(
    mean: float, weight: float, value: float, value_weight: float
) -> tuple[float, float]:
    """Fold ``value`` into a weighted mean; returns (mean, total weight).

    >>> add_to_mean(1.0, 1.0, -1.0, 1.0)
    (0.0, 2.0)
    """
    total = weight + value_weight
    if total <= 0.0:  # nothing weighs anything (decayed to zero): the mean stays
        return mean, total
    return (mean * weight + value * value_weight) / total, total


def model_version(params: ProfileParams, items: ItemMemoryModel | None) -> str:
    """The versions a profile is built with: the profile model's and the item model's.

    >>> model_version(ProfileParams(model_version="minilm+profile-v1"), None)
    'minilm+profile-v1'
    """
    return (
        params.model_version if items is None else f"{params.model_version}+items-{items.version}"
    )


def incarnation_of(event: Event) -> str:
    """Name a profile after the event that created it, and where that event was read.

    The origin (Kafka ``topic/partition/offset`` or ``file name:offset``) is stable across
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
        model_version=params.model_version,
        interest=np.zeros(dim, dtype=np.float16),
        windows=new_windows(params.windows),
        anchor_ms=event.ts_ms,
        first_seen_ms=event.ts_ms,
        last_seen_ms=event.ts_ms,
    )


def _reanchor(profile: UserProfile, anchor_ms: int, params: ProfileParams) -> None:
    """Re-express every decayed weight as of ``anchor_ms``."""
    interest = decay(anchor_ms - profile.anchor_ms, params.interest_half_life_ms)
    affinity = decay(anchor_ms - profile.anchor_ms, params.affinity_half_life_ms)
    profile.interest_weight *= interest
    for scores in (profile.category_affinity, profile.brand_affinity, profile.keywords):
        for key in scores:
            scores[key] *= affinity
    profile.sentiment_weight *= affinity
    profile.category_sentiment = {
        k: (mean, weight * affinity) for k, (mean, weight) in profile.category_sentiment.items()
    }
    profile.anchor_ms = anchor_ms


def _update(
    state: UserState,
    event: Event,
    vector: np.ndarray | None,
    signals: TextSignals | None,
    params: ProfileParams,
    items: ItemMemoryModel | None,
    dropped: set[tuple[str, str]],
) -> None:
    """Fold ``event`` into the long-term profile in place (everything but the windows)."""
    profile = state.profile
    if event.ts_ms - profile.anchor_ms > min(
        params.interest_half_life_ms, params.affinity_half_life_ms
    ):
        _reanchor(profile, event.ts_ms, params)
        state.needs_full = True
    profile.last_seen_ms = max(profile.last_seen_ms, event.ts_ms)
    profile.first_seen_ms = min(profile.first_seen_ms, event.ts_ms)
    profile.counts[event.type] = profile.counts.get(event.type, 0) + 1
    if event.type == "purchase":
        profile.last_purchase_ms = max(profile.last_purchase_ms, event.ts_ms)
    if event.type == "purchase" and event.price is not None:
        profile.spend += event.price * event.quantity
    elif event.type == "refund" and event.price is not None:
        profile.refunded += event.price * event.quantity
    profile.model_version = model_version(params, items)

    since_anchor = event.ts_ms - profile.anchor_ms
    affinity = decay(-since_anchor, params.affinity_half_life_ms)
    if signals is not None and signals.polarity is not None:
        profile.sentiment, profile.sentiment_weight = add_to_mean(
            profile.sentiment, profile.sentiment_weight, signals.polarity, affinity
        )
        if event.category is not None:
            opinions = profile.category_sentiment
            mean, total = opinions.get(event.category, (0.0, 0.0))
            opinions[event.category] = add_to_mean(mean, total, signals.polarity, affinity)
            if len(opinions) > params.max_affinities:
                weakest = min(opinions, key=lambda k: opinions[k][1])
                del opinions[weakest]
                dropped.add(("category_sentiment", weakest))
    weight = params.type_weights.get(event.type, 0.0)
    if weight <= 0.0:
        return
    for name, scores, key in (
        ("category_affinity", profile.category_affinity, event.category),
        ("brand_affinity", profile.brand_affinity, event.brand),
    ):
        if key is not None:
            gone = add_weight(scores, key, weight * affinity, params.max_affinities)
            if gone is not None:
                dropped.add((name, gone))
    if signals is not None:
        for word, share in signals.keywords:
            gone = add_weight(
                profile.keywords, word, weight * affinity * share, params.max_keywords
            )
            if gone is not None:
                dropped.add(("keywords", gone))
    if items is not None and event.item_id is not None:
        previous = profile.item_memory
        evicted: set[str] = set()
        memory = items.remember(previous, event.item_id, event.type, event.ts_ms, evicted)
        dropped.update(("item_long_term", attribute) for attribute in evicted)
        if previous is not None and previous.model_version != memory.model_version:
            state.needs_full = True  # attribute indices changed meaning: start the maps afresh
        elif previous is not None:  # the oldest recent items that made room for this one
            made_room = range(
                previous.seen - len(previous.recent), memory.seen - len(memory.recent)
            )
            dropped.update(("item_recent", str(seq)) for seq in made_room)
        profile.item_memory = memory
    if vector is not None:
        step_weight = weight * decay(-since_anchor, params.interest_half_life_ms)
        profile.interest, profile.interest_weight = sgd_step(
            profile.interest, profile.interest_weight, vector, step_weight
        )


#: Event ids are remembered in blocks of this many, each with the newest event time in it.
DEDUPE_BLOCK = 64


def remember(state: UserState, key: int, ts_ms: int, capacity: int) -> None:
    """Remember an event id; past ``capacity`` forget the oldest and move the horizon.

    When the first id of a block is forgotten, the horizon moves to the newest event time of
    that block: an event at or before it whose id is not remembered may be one of the
    forgotten, so :func:`apply_event` refuses it. The horizon trails about ``capacity``
    events behind the user's newest, at a cost of a few integers per user.

    >>> state = UserState(new_profile(Event("e0", "u", 0, "login"), 2, ProfileParams()))
    >>> for i in range(200):
    ...     remember(state, i, 1_000 * i, capacity=128)
    >>> len(state.seen_event_ids), state.dedupe_horizon_ms, len(state.dedupe_marks)
    (128, 127000, 3)
    """
    seen, marks = state.seen_event_ids, state.dedupe_marks
    if state.dedupe_count % DEDUPE_BLOCK == 0:
        marks.append(ts_ms)
    elif ts_ms > marks[-1]:
        marks[-1] = ts_ms
    state.dedupe_count += 1
    seen[key] = None
    if len(seen) <= capacity:
        return
    del seen[next(iter(seen))]
    forgotten = state.dedupe_count - len(seen) - 1  # the index of the id just forgotten
    if forgotten % DEDUPE_BLOCK == 0:
        state.dedupe_horizon_ms = max(state.dedupe_horizon_ms, marks[0])
    if forgotten % DEDUPE_BLOCK == DEDUPE_BLOCK - 1:
        del marks[0]


def apply_event(
    state: UserState | None,
    event: Event,
    vector: np.ndarray | None,
    params: ProfileParams,
    *,
    dim: int | None = None,
    signals: TextSignals | None = None,
    items: ItemMemoryModel | None = None,
    dropped: set[tuple[str, str]] | None = None,
) -> tuple[UserState | None, Outcome]:
    """Fold one event of a user into their state (in place); ``None`` means erased.

    ``vector`` is the event's embedding (see :func:`operators.text.embedding.embedding_text`) or
    ``None``; ``dim`` sizes the interest vector of a new user when ``vector`` is ``None``;
    ``signals`` are what its text says (:func:`operators.text.read_text`); ``items`` is the
    item model whose per-user memory item events update (see :mod:`operators.recsys.item_model`).
    Keys that capped maps drop are added to ``dropped`` as ``(field, key)``.
    """
    if event.type == "delete_user":
        return None, Outcome.DELETED
    key = event_key(event.event_id)
    if state is not None and key in state.seen_event_ids:
        return state, Outcome.DUPLICATE
    if state is not None and event.ts_ms <= state.dedupe_horizon_ms:
        return state, Outcome.UNVERIFIABLE
    if state is None:
        size = dim if vector is None else len(vector)
        if size is None:
            raise ValueError("a new profile needs `dim` when the event has no vector")
        state = UserState(new_profile(event, size, params))
    remember(state, key, event.ts_ms, params.max_seen_event_ids)
    on_time = add_to_windows(
        state.profile.windows, params.windows, event, params.allowed_lateness_ms
    )
    _update(state, event, vector, signals, params, items, set() if dropped is None else dropped)
    state.profile.version += 1
    return state, Outcome.APPLIED if on_time else Outcome.LATE
