"""The embedded store: one SQLite file (WAL), one write transaction per batch."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from dataflow.serve.store.base import _doc, _now_ms, _with_interest, decode_profile
from dataflow.serve.store.fold import (
    EMPTY,
    Batch,
    BatchResult,
    Folded,
    KafkaTombstone,
    Offsets,
    StoredProfile,
    StoredUser,
    fold_batch,
)
from operators.apps.segments import SegmentTransition

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

    def _load(self, conn: sqlite3.Connection, users: Iterable[str]) -> dict[str, StoredUser]:
        loaded: dict[str, StoredUser] = {}
        for uid in users:
            row = conn.execute(
                "SELECT doc, interest FROM profiles WHERE user_id=?", (uid,)
            ).fetchone()
            gone = conn.execute("SELECT incarnation FROM deleted WHERE user_id=?", (uid,))
            deleted = frozenset(r[0] for r in gone)
            profile = None if row is None else decode_profile(_with_interest(row[0], row[1]))
            if profile is not None or deleted:
                loaded[uid] = StoredUser(profile, deleted)
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
        loaded: Mapping[str, StoredUser],
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
