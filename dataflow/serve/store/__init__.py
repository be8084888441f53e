"""Profiles materialised from deltas into a store that the service reads: SQLite or Redis.

The rules (:mod:`~dataflow.serve.store.fold`) are a pure step over one user's stored state,
shared by both backends; :func:`open_store` picks a backend from a URL.

>>> import numpy as np
>>> from operators.profile import ProfileDelta, encode_vector
>>> v = encode_vector(np.zeros(2, np.float16))
>>> full = ProfileDelta("u1", 1, "full", "e1", 10, ["e1"], "m", changed={"spend": 1.0},
...                     interest=v)
>>> patch = ProfileDelta("u1", 3, "patch", "e1", 20, ["e2", "e3"], "m", base_version=1,
...                      changed={"spend": 7.5})
>>> store = SqliteStore(":memory:")
>>> store.apply(Batch([full, patch, full], {("deltas", 0): 3})).deltas
{'applied': 2, 'stale': 1}
>>> profile = store.get("u1")
>>> profile.version, profile.fields
(3, {'spend': 7.5})
>>> store.committed_offsets()
{('deltas', 0): 3}
"""

from __future__ import annotations

from pathlib import Path

from dataflow.serve.store.base import ProfileStore, decode_profile
from dataflow.serve.store.fold import (
    EMPTY,
    Batch,
    BatchResult,
    KafkaTombstone,
    Offsets,
    Record,
    StoredProfile,
    StoredUser,
    apply_delta,
    fold_batch,
)
from dataflow.serve.store.redis import RedisStore
from dataflow.serve.store.sqlite import SqliteStore


def open_store(url: str) -> SqliteStore | RedisStore:
    """A store from its URL: ``sqlite:///var/lib/ps/profiles.db`` (or a plain path), or
    ``redis://host:6379/0`` (``rediss://`` for TLS; ``?prefix=`` sets the key prefix).

    >>> open_store("sqlite://:memory:").kind
    'sqlite'
    """
    if url.startswith(("redis://", "rediss://", "unix://")):
        base, _, query = url.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        prefix = params.pop("prefix", "ps:")
        rest = "&".join(f"{k}={v}" for k, v in params.items())
        return RedisStore(base + (f"?{rest}" if rest else ""), prefix=prefix)
    if url.startswith("sqlite://"):
        url = url.removeprefix("sqlite://")
    if not url:
        raise ValueError("store: give sqlite:///path/to/profiles.db or redis://host:port/db")
    if url != ":memory:":
        Path(url).parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(url)


__all__ = [
    "EMPTY",
    "Batch",
    "BatchResult",
    "KafkaTombstone",
    "Offsets",
    "ProfileStore",
    "Record",
    "RedisStore",
    "SqliteStore",
    "StoredProfile",
    "StoredUser",
    "apply_delta",
    "decode_profile",
    "fold_batch",
    "open_store",
]
