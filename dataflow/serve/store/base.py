"""What a profile store is, and how both backends encode what they keep."""

from __future__ import annotations

import time
from typing import Protocol

import msgspec

from dataflow.serve.store.fold import Batch, BatchResult, Offsets, StoredProfile


class ProfileStore(Protocol):
    """Where served profiles live. ``apply`` is the only writer; every method is thread-safe."""

    kind: str

    def store_id(self) -> str:
        """A stable id of this store's data (the consumer group is named after it)."""
        ...

    def get(self, user_id: str) -> StoredProfile | None: ...

    def get_json(self, user_id: str, interest: bool = False) -> bytes | None:
        """The profile as the JSON the API serves (``interest`` included when asked)."""
        ...

    async def fetch_json(self, user_id: str, interest: bool = False) -> bytes | None:
        """:meth:`get_json` for an event loop: other requests go on while it waits."""
        ...

    async def aclose(self) -> None:
        """Close what :meth:`fetch_json` opened (on the event loop that used it)."""
        ...

    def apply(self, batch: Batch) -> BatchResult:
        """Apply-if-newer every record, and record the offsets, in one transaction."""
        ...

    def delete(self, user_id: str) -> bool:
        """Erase a user's profile (remembering its incarnation); whether there was one."""
        ...

    def segment_size(self, segment: str) -> int: ...

    def segment_sizes(self) -> dict[str, int]: ...

    def committed_offsets(self) -> Offsets: ...

    def size(self) -> int:
        """How many profiles are stored."""
        ...

    def close(self) -> None: ...


_encode = msgspec.json.Encoder().encode
decode_profile = msgspec.json.Decoder(StoredProfile).decode
_decode_names = msgspec.json.Decoder(list[str]).decode


def _doc(profile: StoredProfile) -> bytes:
    """The profile's JSON without its vector (kept apart: most reads do not want it)."""
    if profile.interest is None:
        return _encode(profile)
    return _encode(msgspec.structs.replace(profile, interest=None))


def _with_interest(doc: bytes, interest: bytes | None) -> bytes:
    """Splice the stored base64 vector into a stored JSON document (no re-encoding)."""
    if interest is None:
        return doc
    return doc[:-1] + b',"interest":"' + interest + b'"}'


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
