"""The profile core: one user's state, the pure step that folds an event into it, and the
deltas that publish it.

:func:`apply_event` is the whole per-user model (duplicates dropped by event id; counts,
spend, time windows, decayed affinities and keywords, opinion sentiment, the item memory,
and an online SGD step on the interest vector); :mod:`~operators.profile.windows` keeps the
per-user windows; :mod:`~operators.profile.coalesce` decides what a delta carries and
:mod:`~operators.profile.deltas` is its wire format and the consumer's fold. The core knows no
application and no recommender: what the applications keep per user rides in
``UserState.apps``, and an item model plugs in through :class:`ItemMemoryModel`.

>>> import numpy as np
>>> from operators.ingest import Event
>>> event = Event("e1", "u1", 1_700_000_000_000, "purchase", item_id="i1", price=20.0)
>>> state, outcome = apply_event(None, event, np.ones(4, np.float32), ProfileParams())
>>> str(outcome), state.profile.counts, state.profile.spend
('applied', {'purchase': 1}, 20.0)
"""

from operators.profile.coalesce import (
    PendingChanges,
    Published,
    decode_pending,
    due_after,
    emit,
    encode_pending,
    erase,
    expire,
    note,
    note_clock,
    published,
    settled,
)
from operators.profile.deltas import (
    Applied,
    DeltaKind,
    MaterializedProfile,
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
from operators.profile.fields import profile_fields, public_fields, rounded, window_fields
from operators.profile.items import (
    ItemMemoryModel,
    UserItemMemory,
    memory_fields,
    memory_from_fields,
)
from operators.profile.state import (
    DEFAULT_TYPE_WEIGHTS,
    Outcome,
    ProfileParams,
    UserProfile,
    UserState,
    decode_state,
    encode_state,
    event_key,
    pack_state,
)
from operators.profile.step import (
    DEDUPE_BLOCK,
    add_to_mean,
    add_weight,
    apply_event,
    decay,
    new_profile,
    remember,
    sgd_step,
)
from operators.profile.windows import (
    DEFAULT_WINDOWS,
    WindowSpec,
    WindowState,
    parse_duration_ms,
    parse_windows,
)

__all__ = [
    "DEDUPE_BLOCK",
    "DEFAULT_TYPE_WEIGHTS",
    "DEFAULT_WINDOWS",
    "Applied",
    "DeltaKind",
    "ItemMemoryModel",
    "MaterializedProfile",
    "Outcome",
    "PendingChanges",
    "ProfileDelta",
    "ProfileParams",
    "ProfileView",
    "Published",
    "UserItemMemory",
    "UserProfile",
    "UserState",
    "WindowSpec",
    "WindowState",
    "add_to_mean",
    "add_weight",
    "apply_event",
    "apply_patch",
    "decay",
    "decode_pending",
    "decode_state",
    "decode_vector",
    "delta_from_json",
    "delta_to_json",
    "due_after",
    "emit",
    "encode_pending",
    "encode_state",
    "encode_vector",
    "erase",
    "event_key",
    "expire",
    "materialize",
    "memory_fields",
    "memory_from_fields",
    "new_profile",
    "note",
    "note_clock",
    "pack_state",
    "parse_duration_ms",
    "parse_windows",
    "patch_between",
    "profile_fields",
    "public_fields",
    "published",
    "remember",
    "rounded",
    "settled",
    "sgd_step",
    "window_fields",
]
