"""Versioned profile deltas: the wire format, and the consumer logic that rebuilds profiles.

The dataflow emits one :class:`ProfileDelta` per change to a user's profile. A consumer that
applies them in version order, ignoring versions it has already applied, reproduces the
profile exactly -- :func:`materialize` and :class:`ProfileView` are that consumer, shipped as a
library so downstream services and our own tests use the same code.

Three kinds of delta:

* ``full`` -- every public field and the whole interest vector. The first delta of a profile
  and every ``full_every``-th version are full, so a consumer can start anywhere.
* ``patch`` -- only the fields that changed, plus ``interest_delta`` (new minus old vector).
* ``tombstone`` -- the user was deleted (``delete_user``); drop everything about them.

Vectors travel as base64 of little-endian float32: compact, and exact, because the producer
itself advances its vector by adding the very float32 delta it sends.

``incarnation`` is the id of the event that created the profile; it tells a re-created
profile (after a deletion) from stale deltas of the deleted one that a replay may resend.

>>> import numpy as np
>>> first = ProfileDelta("u1", 1, "full", "e1", 10, ["e1"], "m1",
...                      changed={"spend": 0.0}, interest=encode_vector(np.ones(2, np.float32)))
>>> second = ProfileDelta("u1", 2, "patch", "e1", 20, ["e2"], "m1", changed={"spend": 9.5},
...                       interest_delta=encode_vector(np.array([0.5, -1.0], np.float32)))
>>> profile = materialize([first, second, first])["u1"]
>>> profile.version, profile.fields["spend"], profile.interest.tolist()
(2, 9.5, [1.5, 0.0])
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import numpy as np

DeltaKind = Literal["full", "patch", "tombstone"]


class ProfileDelta(msgspec.Struct, omit_defaults=True):
    """One change to one user's profile, keyed by ``user_id`` on the deltas topic."""

    user_id: str
    version: int
    kind: DeltaKind
    incarnation: str
    event_time_ms: int
    event_ids: list[str]
    model_version: str
    changed: dict[str, Any] = {}
    interest: str | None = None
    interest_delta: str | None = None
    ingest_ms: int = 0
    processed_ms: int = 0


def encode_vector(vector: np.ndarray) -> str:
    """Base64 of the vector as little-endian float32."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    """Inverse of :func:`encode_vector` (a writable float32 array)."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ProfileDelta)


def delta_to_json(delta: ProfileDelta) -> bytes:
    return _encoder.encode(delta)


def delta_from_json(data: bytes | str) -> ProfileDelta:
    return _decoder.decode(data)


@dataclass
class MaterializedProfile:
    """A profile as a consumer rebuilds it from deltas."""

    user_id: str
    incarnation: str
    version: int
    model_version: str
    fields: dict[str, Any]
    interest: np.ndarray


class Applied(enum.StrEnum):
    """What :meth:`ProfileView.apply` did with a delta."""

    APPLIED = "applied"
    STALE = "stale"  # already applied (a replay), or from a deleted incarnation
    GAP = "gap"  # a version is missing; wait for the next full delta


class ProfileView:
    """Keep the latest profile of every user by applying deltas as they arrive."""

    def __init__(self) -> None:
        self.profiles: dict[str, MaterializedProfile] = {}
        self._deleted: dict[str, set[str]] = {}  # user -> incarnations seen deleted

    def apply(self, delta: ProfileDelta) -> Applied:
        uid = delta.user_id
        if delta.incarnation in self._deleted.get(uid, ()):
            return Applied.STALE
        if delta.kind == "tombstone":
            self.profiles.pop(uid, None)
            self._deleted.setdefault(uid, set()).add(delta.incarnation)
            return Applied.APPLIED
        current = self.profiles.get(uid)
        if current is not None and current.incarnation == delta.incarnation:
            if delta.version <= current.version:
                return Applied.STALE
            if delta.kind == "patch" and delta.version == current.version + 1:
                current.fields.update(delta.changed)
                if delta.interest_delta is not None:
                    current.interest = current.interest + decode_vector(delta.interest_delta)
                current.version = delta.version
                current.model_version = delta.model_version
                return Applied.APPLIED
        if delta.kind != "full" or delta.interest is None:
            return Applied.GAP
        self.profiles[uid] = MaterializedProfile(
            uid,
            delta.incarnation,
            delta.version,
            delta.model_version,
            dict(delta.changed),
            decode_vector(delta.interest),
        )
        return Applied.APPLIED


def materialize(deltas: Iterable[ProfileDelta | bytes | str]) -> dict[str, MaterializedProfile]:
    """Rebuild every user's profile from deltas given in the order they were consumed."""
    view = ProfileView()
    for delta in deltas:
        view.apply(delta if isinstance(delta, ProfileDelta) else delta_from_json(delta))
    return view.profiles
