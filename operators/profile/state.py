"""A user's profile and state: what the profile core keeps per user, and how it rests.

:class:`UserProfile` is what we know of one user (everything but the interest vector is
published as plain fields); :class:`UserState` adds the recent event ids that drop
duplicates and the delta bookkeeping, and carries, without reading it, what the
applications above the core keep per user (``apps``). :class:`ProfileParams` are the
model's knobs. States rest between deltas as compressed MessagePack bytes
(:func:`encode_state`).

States are stored positionally (MessagePack arrays, no field names: about a sixth of a
resting state was names), so a field is only ever added at the end of its struct, with a
default. The MessagePack is compressed with zstd against a dictionary trained on folded
states (``data/state-dictionary.zstd``, made by ``benchmarks/train_state_dictionary.py``):
a state's few kilobytes are too short for a compressor to learn from, but they repeat the
same layout, event types and segment names from user to user, which the dictionary holds
once. That takes about a third off (the float16 vector, 771 bytes, does not compress), and
a resting state is most of the memory a user costs. States written before, uncompressed
or as maps, still decode (:func:`decode_state`).
"""

from __future__ import annotations

import enum
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np
import zstandard

from operators.ingest import Event
from operators.ingest.units import DAY_MS
from operators.profile.deltas import VectorEncoding
from operators.profile.items import UserItemMemory
from operators.profile.windows import DEFAULT_WINDOWS, WindowSpec, WindowState, parse_windows

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
    windows: tuple[WindowSpec, ...] = parse_windows(DEFAULT_WINDOWS)
    allowed_lateness_ms: int = 600_000
    #: How deltas carry the interest vector (not a model knob: the model keeps float16).
    vector_encoding: VectorEncoding = "int8"

    def moves_interest(self, event: Event) -> bool:
        """Whether this event's vector changes the interest vector (its type has weight)."""
        return self.type_weights.get(event.type, 0.0) > 0.0


class UserProfile(msgspec.Struct, array_like=True):
    """What we know of one user; everything but the vector is published as plain fields.

    ``version`` counts the events folded in. Decayed weights are as of ``anchor_ms`` (see the
    module docstring). ``sentiment`` is the decayed mean polarity (-1 to 1) of the user's
    opinions, of total weight ``sentiment_weight``; ``category_sentiment`` maps a category to
    (mean, weight). ``item_memory`` is the user's state in the item model (recent items,
    long-term vector): what :func:`operators.recsys.recommend.recommend` ranks items from.
    """

    user_id: str
    incarnation: str
    model_version: str
    interest: np.ndarray
    windows: WindowState
    version: int = 0
    anchor_ms: int = 0
    interest_weight: float = 0.0
    category_affinity: dict[str, float] = {}
    brand_affinity: dict[str, float] = {}
    keywords: dict[str, float] = {}
    sentiment: float = 0.0
    sentiment_weight: float = 0.0
    category_sentiment: dict[str, tuple[float, float]] = {}
    item_memory: UserItemMemory | None = None
    counts: dict[str, int] = {}
    spend: float = 0.0
    refunded: float = 0.0
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    last_purchase_ms: int = 0  # 0: never bought
    segments: dict[str, int] = {}  # segment name -> event time the user entered it
    rfm: str = ""  # recency, frequency, monetary scores 1-5 ("543"); "" before a purchase


A = TypeVar("A")


class UserState(msgspec.Struct, Generic[A], array_like=True):
    """A user's profile, the recent event ids that drop duplicates, and delta bookkeeping.

    Event ids are kept as 64-bit hashes (:func:`event_key`), oldest first: eight bytes each
    whatever the id, with a collision chance of about 1 in 10^13 per user.
    """

    profile: UserProfile
    seen_event_ids: dict[int, None] = {}  # an ordered set: O(1) to check, oldest first
    #: The newest event time of each block of DEDUPE_BLOCK ids remembered, oldest first ...
    dedupe_marks: list[int] = []
    dedupe_count: int = 0  # ... ids ever remembered ...
    #: ... and the horizon: an event at or before it whose id is not remembered may be a
    #: duplicate whose id was forgotten, so it is refused rather than counted twice.
    dedupe_horizon_ms: int = 0
    deltas_since_full: int = 0
    needs_full: bool = False  # the anchor moved or the item memory was rebuilt
    #: What the applications above the core keep per user (the risk detectors' memory):
    #: carried, never read, by the core, and never published. "risk" in the map-shaped
    #: states written before the positional form.
    apps: A | None = msgspec.field(default=None, name="risk")


class Outcome(enum.StrEnum):
    """What :func:`apply_event` did with an event."""

    APPLIED = "applied"
    LATE = "late"  # applied to the long-term profile, too late for the windows
    DUPLICATE = "duplicate"  # already applied: nothing changed
    UNVERIFIABLE = "unverifiable"  # older than the de-duplication memory: refused
    DELETED = "deleted"  # the user asked to be erased


def event_key(event_id: str) -> int:
    """A stable 64-bit hash of an event id (Python's own ``hash`` changes between runs).

    >>> event_key("e1") == event_key("e1") != event_key("e2")
    True
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _encode_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.astype("<f2").tobytes()
    raise NotImplementedError(f"cannot store {type(obj).__name__} in a user state")


def _decode_array(kind: type, obj: Any) -> Any:
    if kind is np.ndarray and isinstance(obj, bytes):
        return np.frombuffer(obj, "<f2")  # read-only: every update makes a new vector
    raise NotImplementedError(f"cannot restore {kind} from {type(obj).__name__}")


_state_encoder = msgspec.msgpack.Encoder(enc_hook=_encode_array)
_buffers = threading.local()


@lru_cache(maxsize=8)
def _decoder(apps: Any) -> msgspec.msgpack.Decoder[UserState[Any]]:
    return msgspec.msgpack.Decoder(UserState[apps], dec_hook=_decode_array)


#: The shipped zstd dictionary for resting states (see the module docstring).
STATE_DICTIONARY = "data/state-dictionary.zstd"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first bytes: no MessagePack state's
_LEVEL = 1  # level 3 takes 3% more off for a quarter more time


@cache
def _dictionary() -> zstandard.ZstdCompressionDict:
    data = resources.files("operators").joinpath(STATE_DICTIONARY).read_bytes()
    dictionary = zstandard.ZstdCompressionDict(data)
    dictionary.precompute_compress(level=_LEVEL)
    return dictionary


def _packed(state: UserState) -> bytearray:
    """The state as MessagePack, in this thread's buffer (valid until its next call)."""
    buffer = getattr(_buffers, "state", None)
    if buffer is None:
        buffer = _buffers.state = bytearray()
    _state_encoder.encode_into(state, buffer)
    return buffer


def state_compressor(dictionary: zstandard.ZstdCompressionDict) -> zstandard.ZstdCompressor:
    """How resting states are compressed, against ``dictionary`` (the shipped one, or one
    being trained)."""
    return zstandard.ZstdCompressor(level=_LEVEL, dict_data=dictionary, write_checksum=False)


def pack_state(state: UserState) -> bytes:
    """The state as uncompressed MessagePack: what the dictionary is trained on."""
    return bytes(_packed(state))


def encode_state(state: UserState) -> bytes:
    """The state as compact bytes (compressed MessagePack): how it rests between deltas and
    in snapshots.

    Encoded into a per-thread buffer and compressed from there: ``encode`` would return
    bytes whose allocation is half as large again as their length. The compressor's bytes
    keep the allocation of its worst case (the uncompressed size, ~2 KB) whatever their
    length, so a resting state would hold as much memory as before it was compressed; an
    exact copy lets that go. Compressors are not shared between threads (a process may run
    several workers).
    """
    compressor = getattr(_buffers, "compressor", None)
    if compressor is None:
        compressor = _buffers.compressor = state_compressor(_dictionary())
    return memoryview(compressor.compress(_packed(state))).tobytes()


def decode_state(data: bytes, apps: Any = Any) -> UserState[Any]:
    """Inverse of :func:`encode_state`; ``apps`` is the type of what the applications keep
    (``Any``: as plain data). Reads the uncompressed and map-shaped states of earlier
    releases too."""
    if data.startswith(_ZSTD_MAGIC):
        decompressor = getattr(_buffers, "decompressor", None)
        if decompressor is None:
            decompressor = _buffers.decompressor = zstandard.ZstdDecompressor(_dictionary())
        data = decompressor.decompress(data)
    if data and (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)):  # a MessagePack map
        plain = _positional(UserState, msgspec.msgpack.decode(data))
        return msgspec.convert(plain, UserState[apps], dec_hook=_decode_array)
    return _decoder(apps).decode(data)


#: The structs stored as maps (field name -> value) before states were positional, and
#: which of their fields held another such struct.
_WERE_MAPS: dict[type, dict[str, type]] = {
    UserState: {"profile": UserProfile},
    UserProfile: {"item_memory": UserItemMemory},
    UserItemMemory: {},
}


def _positional(kind: type, mapping: dict[str, Any]) -> list[Any]:
    """A struct stored by field name, as its fields in order (missing ones: their default)."""
    nested = _WERE_MAPS[kind]
    values = []
    for f in msgspec.structs.fields(kind):
        if f.encode_name in mapping:
            value = mapping[f.encode_name]
            if f.name in nested and isinstance(value, dict):
                value = _positional(nested[f.name], value)
        elif f.default_factory is not msgspec.NODEFAULT:
            value = f.default_factory()
        else:
            value = f.default
        values.append(value)
    return values
