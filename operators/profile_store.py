"""Profiles materialised from deltas into a store that a service reads: SQLite or Redis.

``profilestream serve`` consumes the deltas topic (and the segments topic) and keeps every
user's newest profile in a :class:`ProfileStore`, which answers reads in microseconds. The
rules are :class:`operators.deltas.ProfileView`'s, written as a pure step over one user's
stored state (:func:`apply_record`) so that both backends share them:

* a delta applies only when it is newer than the stored version of the same incarnation
  (replays after a flow restart are ``stale``); a patch applies to any stored version from
  its ``base_version`` up; a patch whose base is ahead of the stored version is a ``gap``:
  the stored profile stays as it is until the next full delta of the user;
* a user starts from a full delta; a ``tombstone`` delta deletes the user and remembers the
  incarnation, so a replayed delta of the deleted profile cannot bring it back;
* a Kafka tombstone (the user's key with a null value, which the flow sends after the JSON
  tombstone so that compaction drops the user) deletes whatever profile is stored, and
  remembers its incarnation the same way;
* a segment transition adds the user to a segment (``enter``) or removes them (``exit``);
  a replay re-sends a suffix of a user's transitions in order, so set semantics end on the
  same memberships without keeping every transition id.

A :class:`Batch` -- consumed records and the offsets after them -- is applied in one
transaction, offsets included (SQLite: one write transaction; Redis: one ``MULTI``/``EXEC``
after ``WATCH``-ing the batch's users), so the offsets a store reports are exactly those of
what it holds, and a restarted consumer resumes from :meth:`ProfileStore.committed_offsets`
without re-reading or losing anything. Both backends read a batch's users first, fold the
records with the pure step, and write the users that changed.

>>> import numpy as np
>>> from operators.deltas import encode_vector
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

import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from operators.deltas import Applied, ProfileDelta, apply_patch
from operators.segments import SegmentTransition

#: ``(topic, partition)`` -> the next offset to read.
Offsets = dict[tuple[str, int], int]


class KafkaTombstone(msgspec.Struct, frozen=True):
    """A null-valued message on the deltas topic: erase whatever the store has for the key."""

    user_id: str


Record = ProfileDelta | KafkaTombstone | SegmentTransition


class StoredProfile(msgspec.Struct, omit_defaults=True):
    """A user's profile as the store keeps and serves it (``interest`` only when asked).

    ``fields`` are the public profile fields of the deltas contract (counts, affinities,
    windows, segments, ...); ``interest`` is the vector as the deltas carry it (base64 of
    little-endian float16). ``processed_ms`` is when the flow emitted the newest delta
    applied, ``stored_ms`` when the store applied it.
    """

    user_id: str
    incarnation: str
    version: int
    model_version: str
    event_time_ms: int
    processed_ms: int
    stored_ms: int
    fields: dict[str, Any]
    interest: str | None = None


@dataclass(frozen=True)
class UserState:
    """One user's stored state: the profile (``None``: none) and the deleted incarnations."""

    profile: StoredProfile | None = None
    deleted: frozenset[str] = frozenset()


EMPTY = UserState()


def apply_delta(state: UserState, delta: ProfileDelta, now_ms: int) -> tuple[UserState, Applied]:
    """The user's state after ``delta``, and what became of it (pure; ``state`` is not changed).

    >>> d = ProfileDelta("u", 2, "patch", "e1", 0, [], "m", base_version=1, changed={"a": 1})
    >>> apply_delta(EMPTY, d, 0)[1]  # a user starts from a full delta
    <Applied.GAP: 'gap'>
    """
    if delta.incarnation in state.deleted:
        return state, Applied.STALE
    if delta.kind == "tombstone":
        return UserState(None, state.deleted | {delta.incarnation}), Applied.APPLIED
    current = state.profile
    if current is not None and current.incarnation == delta.incarnation:
        if delta.version <= current.version:
            return state, Applied.STALE
        if delta.kind == "patch":
            if delta.base_version > current.version:
                return state, Applied.GAP
            fields = dict(current.fields)
            for name in delta.changed:  # copy only the maps the patch merges into
                if isinstance(fields.get(name), dict):
                    fields[name] = dict(fields[name])
            apply_patch(fields, delta.changed)
            interest = delta.interest if delta.interest is not None else current.interest
            return UserState(_profile(delta, fields, interest, now_ms), state.deleted), (
                Applied.APPLIED
            )
    if delta.kind != "full" or delta.interest is None:
        return state, Applied.GAP
    # The maps are shared with the delta, never changed: a patch copies what it merges into.
    fields = dict(delta.changed)
    return UserState(_profile(delta, fields, delta.interest, now_ms), state.deleted), (
        Applied.APPLIED
    )


def _profile(
    delta: ProfileDelta, fields: dict[str, Any], interest: str | None, now_ms: int
) -> StoredProfile:
    return StoredProfile(
        delta.user_id,
        delta.incarnation,
        delta.version,
        delta.model_version,
        delta.event_time_ms,
        delta.processed_ms,
        now_ms,
        fields,
        interest,
    )


def apply_kafka_tombstone(state: UserState) -> tuple[UserState, bool]:
    """Erase the stored profile (remembering its incarnation); whether there was one."""
    if state.profile is None:
        return state, False
    return UserState(None, state.deleted | {state.profile.incarnation}), True


@dataclass
class BatchResult:
    """What a batch did: outcomes by kind of record, and the users written."""

    deltas: dict[str, int] = field(default_factory=dict)  # applied / stale / gap
    kafka_tombstones: dict[str, int] = field(default_factory=dict)  # deleted / absent
    transitions: dict[str, int] = field(default_factory=dict)  # enter / exit
    users_written: int = 0
    #: ``stored_ms - processed_ms`` of each delta applied: how far the store trails the flow.
    delays_ms: list[int] = field(default_factory=list)


@dataclass
class Folded:
    """A batch folded over the users' loaded states: what to write (pure output)."""

    states: dict[str, UserState]  # users whose state changed, and their new state
    segment_ops: list[tuple[str, str, bool]]  # (segment, user, True: enter / False: exit)
    result: BatchResult


def fold_batch(loaded: Mapping[str, UserState], records: Iterable[Record], now_ms: int) -> Folded:
    """Apply ``records`` in order to the users' ``loaded`` states (missing users are new)."""
    states: dict[str, UserState] = {}
    ops: list[tuple[str, str, bool]] = []
    deltas: Counter[str] = Counter()
    tombstones: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    delays: list[int] = []
    for record in records:
        if isinstance(record, SegmentTransition):
            ops.append((record.segment, record.user_id, record.direction == "enter"))
            transitions[record.direction] += 1
            continue
        uid = record.user_id
        state = states.get(uid) or loaded.get(uid, EMPTY)
        if isinstance(record, KafkaTombstone):
            new, deleted = apply_kafka_tombstone(state)
            tombstones["deleted" if deleted else "absent"] += 1
        else:
            new, outcome = apply_delta(state, record, now_ms)
            deltas[outcome.value] += 1
            if outcome is Applied.APPLIED and record.processed_ms:
                delays.append(now_ms - record.processed_ms)
        if new is not state:
            states[uid] = new
    result = BatchResult(dict(deltas), dict(tombstones), dict(transitions), len(states), delays)
    return Folded(states, ops, result)


@dataclass
class Batch:
    """Consumed records in partition order, and the offsets to commit with them."""

    records: Sequence[Record]
    offsets: Mapping[tuple[str, int], int] = field(default_factory=dict)


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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, doc BLOB NOT NULL, interest BLOB);
CREATE TABLE IF NOT EXISTS deleted (user_id TEXT NOT NULL, incarnation TEXT NOT NULL,
    PRIMARY KEY (user_id, incarnation)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segment_members (segment TEXT NOT NULL, user_id TEXT NOT NULL,
    PRIMARY KEY (segment, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segment_sizes (segment TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SqliteStore:
    """The embedded default: one SQLite file (WAL), written by the consumer, read by the API.

    WAL lets readers run beside the one writer without blocking; ``synchronous=NORMAL`` makes
    a crash lose at most the last transactions, profiles and offsets together, so the
    consumer re-reads exactly what was lost. Each thread gets its own read connection.
    """

    kind = "sqlite"

    def __init__(self, path: str | Path, *, clock: Callable[[], int] = _now_ms) -> None:
        self.path = str(path)
        self._clock = clock
        self._local = threading.local()
        self._write_lock = threading.Lock()
        if self.path == ":memory:":  # one shared in-memory database (tests, doctests)
            self.path = f"file:profilestore-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        with self._writer:
            self._writer.execute(
                "INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,)
            )
            self._writer.execute("INSERT OR IGNORE INTO meta VALUES ('users', '0')")

    def _connect(self) -> sqlite3.Connection:
        uri = self.path.startswith("file:")
        conn = sqlite3.connect(
            self.path, uri=uri, isolation_level=None, check_same_thread=False, timeout=30
        )
        if not uri:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def store_id(self) -> str:
        row = self._reader().execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        return str(row[0])

    def get(self, user_id: str) -> StoredProfile | None:
        data = self.get_json(user_id, interest=True)
        return None if data is None else decode_profile(data)

    def get_json(self, user_id: str, interest: bool = False) -> bytes | None:
        if not interest:
            row = (
                self._reader()
                .execute("SELECT doc FROM profiles WHERE user_id=?", (user_id,))
                .fetchone()
            )
            return None if row is None else bytes(row[0])
        row = (
            self._reader()
            .execute("SELECT doc, interest FROM profiles WHERE user_id=?", (user_id,))
            .fetchone()
        )
        return None if row is None else _with_interest(bytes(row[0]), row[1])

    async def fetch_json(self, user_id: str, interest: bool = False) -> bytes | None:
        # A primary-key read of a local file takes tens of microseconds: less than handing
        # it to a thread would cost, so it runs on the loop.
        return self.get_json(user_id, interest)

    async def aclose(self) -> None:
        return None

    def _load(self, conn: sqlite3.Connection, users: Iterable[str]) -> dict[str, UserState]:
        loaded: dict[str, UserState] = {}
        for uid in users:
            row = conn.execute(
                "SELECT doc, interest FROM profiles WHERE user_id=?", (uid,)
            ).fetchone()
            gone = conn.execute("SELECT incarnation FROM deleted WHERE user_id=?", (uid,))
            deleted = frozenset(r[0] for r in gone)
            profile = None if row is None else decode_profile(_with_interest(row[0], row[1]))
            if profile is not None or deleted:
                loaded[uid] = UserState(profile, deleted)
        return loaded

    def apply(self, batch: Batch) -> BatchResult:
        users = {r.user_id for r in batch.records if not isinstance(r, SegmentTransition)}
        conn = self._writer
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                loaded = self._load(conn, users)
                folded = fold_batch(loaded, batch.records, self._clock())
                self._write(conn, loaded, folded, batch.offsets)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return folded.result

    def _write(
        self,
        conn: sqlite3.Connection,
        loaded: Mapping[str, UserState],
        folded: Folded,
        offsets: Mapping[tuple[str, int], int],
    ) -> None:
        users = 0
        for uid, state in folded.states.items():
            before = loaded.get(uid, EMPTY)
            if state.profile is None:
                conn.execute("DELETE FROM profiles WHERE user_id=?", (uid,))
            else:
                interest = state.profile.interest
                conn.execute(
                    "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)",
                    (uid, _doc(state.profile), None if interest is None else interest.encode()),
                )
            users += (state.profile is not None) - (before.profile is not None)
            conn.executemany(
                "INSERT OR IGNORE INTO deleted VALUES (?, ?)",
                [(uid, inc) for inc in state.deleted - before.deleted],
            )
        if users:
            conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key='users'", (users,)
            )
        for segment, uid, enter in folded.segment_ops:
            if enter:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO segment_members VALUES (?, ?)", (segment, uid)
                )
            else:
                cur = conn.execute(
                    "DELETE FROM segment_members WHERE segment=? AND user_id=?", (segment, uid)
                )
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO segment_sizes VALUES (?, ?) ON CONFLICT(segment) "
                    "DO UPDATE SET size = size + excluded.size",
                    (segment, 1 if enter else -1),
                )
        conn.executemany(
            "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
            [(topic, part, off) for (topic, part), off in offsets.items()],
        )

    def delete(self, user_id: str) -> bool:
        result = self.apply(Batch([KafkaTombstone(user_id)]))
        return result.kafka_tombstones.get("deleted", 0) > 0

    def segment_size(self, segment: str) -> int:
        row = (
            self._reader()
            .execute("SELECT size FROM segment_sizes WHERE segment=?", (segment,))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def segment_sizes(self) -> dict[str, int]:
        rows = self._reader().execute("SELECT segment, size FROM segment_sizes ORDER BY segment")
        return {segment: int(size) for segment, size in rows}

    def committed_offsets(self) -> Offsets:
        rows = self._reader().execute("SELECT topic, partition, next_offset FROM offsets")
        return {(topic, int(part)): int(off) for topic, part, off in rows}

    def size(self) -> int:
        row = self._reader().execute("SELECT value FROM meta WHERE key='users'").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class RedisStore:
    """The production option: a standalone Redis (or a Sentinel-managed primary), shared by
    any number of API replicas.

    Keys, under ``prefix``: ``p:<user>`` the profile JSON, ``i:<user>`` its vector,
    ``d:<user>`` the deleted incarnations (JSON list), ``s:<segment>`` a segment's members
    (a set; ``segments`` names them), ``offsets`` (a hash ``topic|partition`` -> next offset),
    ``users`` (the profile count) and ``id``. A batch ``WATCH``-es its users' keys, reads them
    in one ``MGET``, and writes profiles, segments and offsets in one ``MULTI``/``EXEC``: if
    another writer touched a user meanwhile (a consumer group rebalance), it is read again.
    Multi-key transactions need every key on one node, so Redis Cluster is not supported.
    """

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "ps:", clock: Callable[[], int] = _now_ms):
        import redis  # only this backend needs the client

        self.url = url
        self.prefix = prefix
        self._clock = clock
        # redis-py's annotations mix its sync and async returns: typed as Any here.
        self._redis: Any = redis.Redis.from_url(url)
        self._aredis: Any = None  # redis.asyncio, made on the serving event loop
        self._watch_error = redis.WatchError
        self._redis.set(prefix + "id", uuid.uuid4().hex, nx=True)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def store_id(self) -> str:
        return bytes(self._redis.get(self.prefix + "id")).decode()

    def get(self, user_id: str) -> StoredProfile | None:
        data = self.get_json(user_id, interest=True)
        return None if data is None else decode_profile(data)

    def get_json(self, user_id: str, interest: bool = False) -> bytes | None:
        if not interest:
            return self._redis.get(self._key("p", user_id))
        doc, vector = self._redis.mget([self._key("p", user_id), self._key("i", user_id)])
        return None if doc is None else _with_interest(doc, vector)

    async def fetch_json(self, user_id: str, interest: bool = False) -> bytes | None:
        # A round trip to Redis blocks for a few hundred microseconds; on the event loop's
        # own connection pool, requests wait for Redis side by side instead of in a queue
        # (p99 at 1,000 requests/s: 16.6 ms with the blocking client; see the README).
        client = self._async_client()
        if not interest:
            return await client.get(self._key("p", user_id))
        doc, vector = await client.mget([self._key("p", user_id), self._key("i", user_id)])
        return None if doc is None else _with_interest(doc, vector)

    def _async_client(self) -> Any:
        if self._aredis is None:
            import redis.asyncio

            self._aredis = redis.asyncio.Redis.from_url(self.url)
        return self._aredis

    async def aclose(self) -> None:
        if self._aredis is not None:
            await self._aredis.aclose()
            self._aredis = None

    def apply(self, batch: Batch) -> BatchResult:
        users = sorted({r.user_id for r in batch.records if not isinstance(r, SegmentTransition)})
        keys = [self._key(kind, uid) for uid in users for kind in ("p", "i", "d")]
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if keys:
                        pipe.watch(*keys)
                    values = pipe.mget(keys) if keys else []  # immediate after WATCH
                    loaded = self._decode(users, values)
                    folded = fold_batch(loaded, batch.records, self._clock())
                    pipe.multi()
                    self._write(pipe, loaded, folded, batch.offsets)
                    pipe.execute()
                    return folded.result
                except self._watch_error:
                    continue

    def _decode(self, users: Sequence[str], values: Sequence[Any]) -> dict[str, UserState]:
        loaded: dict[str, UserState] = {}
        for n, uid in enumerate(users):
            doc, vector, gone = values[3 * n : 3 * n + 3]
            profile = None if doc is None else decode_profile(_with_interest(doc, vector))
            deleted = frozenset(_decode_names(gone)) if gone is not None else frozenset()
            if profile is not None or deleted:
                loaded[uid] = UserState(profile, deleted)
        return loaded

    def _write(
        self,
        pipe: Any,
        loaded: Mapping[str, UserState],
        folded: Folded,
        offsets: Mapping[tuple[str, int], int],
    ) -> None:
        users = 0
        for uid, state in folded.states.items():
            before = loaded.get(uid, EMPTY)
            if state.profile is None:
                pipe.delete(self._key("p", uid), self._key("i", uid))
            else:
                pipe.set(self._key("p", uid), _doc(state.profile))
                if state.profile.interest is None:
                    pipe.delete(self._key("i", uid))
                else:
                    pipe.set(self._key("i", uid), state.profile.interest)
            if state.deleted != before.deleted:
                pipe.set(self._key("d", uid), _encode(sorted(state.deleted)))
            users += (state.profile is not None) - (before.profile is not None)
        if users:
            pipe.incrby(self.prefix + "users", users)
        for segment, uid, enter in folded.segment_ops:
            if enter:
                pipe.sadd(self._key("s", segment), uid)
                pipe.sadd(self.prefix + "segments", segment)
            else:
                pipe.srem(self._key("s", segment), uid)
        if offsets:
            pipe.hset(
                self.prefix + "offsets",
                mapping={f"{topic}|{part}": off for (topic, part), off in offsets.items()},
            )

    def delete(self, user_id: str) -> bool:
        result = self.apply(Batch([KafkaTombstone(user_id)]))
        return result.kafka_tombstones.get("deleted", 0) > 0

    def segment_size(self, segment: str) -> int:
        return int(self._redis.scard(self._key("s", segment)))

    def segment_sizes(self) -> dict[str, int]:
        names = sorted(n.decode() for n in self._redis.smembers(self.prefix + "segments"))
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.scard(self._key("s", name))
            sizes = pipe.execute()
        return dict(zip(names, (int(s) for s in sizes), strict=True))

    def committed_offsets(self) -> Offsets:
        raw = self._redis.hgetall(self.prefix + "offsets")
        offsets: Offsets = {}
        for key, value in raw.items():
            topic, _, part = key.decode().rpartition("|")
            offsets[(topic, int(part))] = int(value)
        return offsets

    def size(self) -> int:
        return int(self._redis.get(self.prefix + "users") or 0)

    def close(self) -> None:
        self._redis.close()


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
