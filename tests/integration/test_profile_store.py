"""The profile store: ProfileView's rules over stored state, on SQLite and on a real Redis."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dataflow.serve.store import (
    EMPTY,
    Batch,
    KafkaTombstone,
    ProfileStore,
    RedisStore,
    SqliteStore,
    apply_delta,
    open_store,
)
from operators.apps.segments import SegmentTransition
from operators.profile import (
    Applied,
    DeltaKind,
    ProfileDelta,
    ProfileView,
    decode_vector,
    encode_vector,
)
from tests.support.redis_server import redis_url

__all__ = ["redis_url"]  # the fixture, imported for pytest


def delta(
    kind: DeltaKind,
    version: int,
    incarnation: str = "e1",
    base: int = 0,
    user: str = "u",
    vector: float | None = None,
) -> ProfileDelta:
    """A delta whose ``spend`` and ``counts["v<version>"]`` record the version it carries."""
    changed = {} if kind == "tombstone" else {"spend": float(version), "counts": {"n": version}}
    if kind == "full":
        vector = 0.5 if vector is None else vector
    interest = None if vector is None else encode_vector(np.full(4, vector, np.float16))
    return ProfileDelta(
        user, version, kind, incarnation, 1000 + version, [f"x{version}"], "m", base, changed,
        interest, processed_ms=1,
    )  # fmt: skip


def full(version: int, incarnation: str = "e1", user: str = "u", vector: float = 0.5):
    return delta("full", version, incarnation, user=user, vector=vector)


def patch(version: int, base: int, incarnation: str = "e1", user: str = "u", vector=None):
    return delta("patch", version, incarnation, base, user=user, vector=vector)


def tombstone(version: int, incarnation: str = "e1", user: str = "u") -> ProfileDelta:
    return delta("tombstone", version, incarnation, user=user)


def enter(user: str, segment: str, n: int = 0) -> SegmentTransition:
    return SegmentTransition(f"t{n}", user, segment, "enter", n, None, n, "d1")


def leave(user: str, segment: str, n: int = 0) -> SegmentTransition:
    return SegmentTransition(f"t{n}", user, segment, "exit", n, None, n, "d1")


# -- the pure step -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "incoming", "outcome", "version"),
    [
        (None, full(3), Applied.APPLIED, 3),
        (None, patch(3, 1), Applied.GAP, None),  # a user starts from a full delta
        (full(3), full(3), Applied.STALE, 3),  # re-applied
        (full(3), patch(2, 1), Applied.STALE, 3),  # replayed, older
        (full(3), patch(5, 2), Applied.APPLIED, 5),  # base below the stored version: applies
        (full(3), patch(5, 3), Applied.APPLIED, 5),
        (full(3), patch(6, 4), Applied.GAP, 3),  # base ahead: missing changes
        (full(3), full(9), Applied.APPLIED, 9),
        (full(3), full(1, "e2"), Applied.APPLIED, 1),  # another incarnation, started anew
        (full(3), patch(4, 3, "e2"), Applied.GAP, 3),
        (full(3), tombstone(4), Applied.APPLIED, None),
    ],
)
def test_apply_delta_follows_the_profile_view(
    stored: ProfileDelta | None, incoming: ProfileDelta, outcome: Applied, version: int | None
) -> None:
    state = EMPTY if stored is None else apply_delta(EMPTY, stored, 0)[0]
    new, got = apply_delta(state, incoming, 0)
    view = ProfileView()
    if stored is not None:
        view.apply(stored)
    assert got is outcome is view.apply(incoming)
    assert (new.profile.version if new.profile else None) == version
    if got is not Applied.APPLIED:
        assert new is state


def test_apply_delta_leaves_its_input_alone() -> None:
    state, _ = apply_delta(EMPTY, full(1), 0)
    fields = {"spend": 1.0, "counts": {"n": 1}}
    assert state.profile is not None and state.profile.fields == fields
    apply_delta(state, patch(2, 1), 0)
    assert state.profile.fields == fields


# -- both backends, through the protocol --------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProfileStore]:
    made: ProfileStore
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "profiles.db")
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisStore(url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    yield made
    made.close()


def apply(store: ProfileStore, *records, offsets: dict | None = None):
    return store.apply(Batch(list(records), offsets or {}))


def test_a_profile_is_stored_from_a_full_delta_and_patched(store: ProfileStore) -> None:
    result = apply(store, full(1), patch(3, 1, vector=0.25), offsets={("d", 0): 2})
    assert result.deltas == {"applied": 2}
    profile = store.get("u")
    assert profile is not None
    assert (profile.version, profile.incarnation, profile.event_time_ms) == (3, "e1", 1003)
    assert profile.fields == {"spend": 3.0, "counts": {"n": 3}}
    assert profile.interest is not None
    assert decode_vector(profile.interest).tolist() == [0.25] * 4
    assert store.size() == 1
    assert store.committed_offsets() == {("d", 0): 2}


def test_the_served_json_leaves_the_vector_out_unless_asked(store: ProfileStore) -> None:
    apply(store, full(1))
    assert b"interest" not in (store.get_json("u") or b"")
    assert b'"interest":"' in (store.get_json("u", interest=True) or b"")
    assert store.get_json("nobody") is None and store.get("nobody") is None


def test_the_event_loop_read_answers_as_the_blocking_one(store: ProfileStore) -> None:
    apply(store, full(1), patch(2, 1, vector=0.25))

    async def reads() -> list[bytes | None]:
        try:  # four reads on one loop: the client and its connection are reused
            return [await store.fetch_json(u, interest=i) for u in ("u", "nobody")
                    for i in (False, True)]  # fmt: skip
        finally:
            await store.aclose()

    expected = [store.get_json(u, interest=i) for u in ("u", "nobody") for i in (False, True)]
    assert asyncio.run(reads()) == expected
    assert expected[0] is not None and expected[1] is not None and expected[2] is None


def test_re_applying_a_batch_changes_nothing(store: ProfileStore) -> None:
    batch = [full(1), patch(2, 1), patch(4, 2)]
    apply(store, *batch)
    before = store.get("u")
    again = apply(store, *batch)
    assert again.deltas == {"stale": 3} and again.users_written == 0
    after = store.get("u")
    assert after is not None and before is not None
    assert (after.version, after.fields, after.stored_ms) == (4, before.fields, before.stored_ms)


def test_a_replay_with_other_boundaries_lands_on_the_new_version(store: ProfileStore) -> None:
    # The flow restarted from a snapshot at version 2 and re-coalesced: patch 2 -> 6 arrives
    # at a store already at 4, as do versions it already has.
    apply(store, full(1), patch(2, 1), patch(4, 2))
    result = apply(store, patch(3, 2), patch(6, 2), patch(7, 6))
    assert result.deltas == {"stale": 1, "applied": 2}
    profile = store.get("u")
    assert profile is not None and profile.version == 7 and profile.fields["counts"] == {"n": 7}


def test_a_gap_keeps_the_profile_until_the_next_full_delta(store: ProfileStore) -> None:
    apply(store, full(1))
    gap = apply(store, patch(5, 3))
    assert gap.deltas == {"gap": 1}
    assert store.get("u").version == 1  # type: ignore[union-attr]
    assert apply(store, patch(6, 5)).deltas == {"gap": 1}  # still waiting
    assert apply(store, full(7)).deltas == {"applied": 1}
    assert store.get("u").version == 7  # type: ignore[union-attr]


def test_a_tombstone_deletes_and_replays_of_the_deleted_profile_stay_out(
    store: ProfileStore,
) -> None:
    apply(store, full(1), full(1, user="v"))
    result = apply(store, tombstone(2))
    assert result.deltas == {"applied": 1}
    assert store.get("u") is None and store.size() == 1
    # a flow restart re-sends the deleted incarnation's deltas: they must not come back
    assert apply(store, full(1), patch(2, 1), tombstone(2)).deltas == {"stale": 3}
    assert store.get("u") is None
    # the user returns: a new incarnation starts at version 1
    apply(store, full(1, "e9"))
    assert store.get("u").incarnation == "e9"  # type: ignore[union-attr]
    assert store.size() == 2


def test_a_kafka_null_tombstone_deletes_whatever_is_stored(store: ProfileStore) -> None:
    apply(store, full(1), patch(2, 1))
    result = apply(store, KafkaTombstone("u"), KafkaTombstone("nobody"))
    assert result.kafka_tombstones == {"deleted": 1, "absent": 1}
    assert store.get("u") is None and store.size() == 0
    assert apply(store, patch(3, 2), full(2)).deltas == {"stale": 2}
    # the JSON tombstone, then the Kafka one, as the flow sends them
    apply(store, full(1, "e2"), tombstone(2, "e2"), KafkaTombstone("u"))
    assert store.get("u") is None
    assert store.delete("u") is False
    apply(store, full(1, "e3"))
    assert store.delete("u") is True and store.get("u") is None


def test_segment_sizes_follow_entries_and_exits_and_replays(store: ProfileStore) -> None:
    transitions = [enter("a", "vip", 1), enter("b", "vip", 2), leave("a", "vip", 3)]
    transitions += [enter("a", "new", 4)]
    apply(store, *transitions)
    apply(store, *transitions[1:])  # a replay re-sends a suffix, in order
    assert store.segment_size("vip") == 1
    assert store.segment_size("new") == 1
    assert store.segment_size("unknown") == 0
    apply(store, leave("b", "vip", 5), leave("b", "vip", 5))
    assert store.segment_sizes() == {"new": 1, "vip": 0}


def test_offsets_move_with_each_batch(store: ProfileStore) -> None:
    apply(store, full(1), offsets={("d", 0): 5, ("s", 1): 2})
    apply(store, patch(2, 1), offsets={("d", 0): 9})
    assert store.committed_offsets() == {("d", 0): 9, ("s", 1): 2}


def test_random_batches_and_replays_end_where_the_profile_view_does(store: ProfileStore) -> None:
    rng = random.Random(7)
    stream: list[ProfileDelta | KafkaTombstone] = []
    for user in ("a", "b", "c", "d"):
        version, incarnation = 0, f"{user}1"
        for step in range(30):
            new = version + rng.randint(1, 3)
            if version == 0 or step % 10 == 0:
                stream.append(full(new, incarnation, user, vector=step / 64))
            else:
                stream.append(patch(new, version, incarnation, user, vector=step / 64))
            version = new
        if user == "b":
            stream.append(tombstone(version + 1, incarnation, user))
            stream.append(KafkaTombstone(user))
    per_user: dict[str, list[ProfileDelta | KafkaTombstone]] = {}
    for r in stream:
        per_user.setdefault(r.user_id, []).append(r)
    # Users interleave at random, each user's records in order (one partition each).
    ordered = []
    while any(per_user.values()):
        user = rng.choice([u for u, rs in per_user.items() if rs])
        ordered.append(per_user[user].pop(0))
    replayed = ordered + ordered[len(ordered) // 2 :]  # a restart re-sends a suffix
    start = 0
    while start < len(replayed):
        size = rng.randint(1, 12)
        apply(store, *replayed[start : start + size])
        start += size
    view = ProfileView()
    for r in replayed:
        if isinstance(r, ProfileDelta):
            view.apply(r)
        else:
            view.profiles.pop(r.user_id, None)
    assert store.size() == len(view.profiles) == 3
    for user, expected in view.profiles.items():
        got = store.get(user)
        assert got is not None
        assert (got.version, got.incarnation, got.fields) == (
            expected.version,
            expected.incarnation,
            expected.fields,
        )
        assert got.interest is not None
        assert decode_vector(got.interest).tolist() == expected.interest.tolist()


def test_sqlite_keeps_everything_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    first = SqliteStore(path)
    apply(first, full(1), tombstone(2, "e0", "v"), enter("u", "vip"), offsets={("d", 2): 40})
    ident = first.store_id()
    first.close()
    again = open_store(f"sqlite://{path}")
    assert again.store_id() == ident
    assert again.committed_offsets() == {("d", 2): 40}
    assert again.get("u") is not None and again.segment_size("vip") == 1
    assert apply(again, full(1, "e0", "v")).deltas == {"stale": 1}  # still deleted


def test_open_store_reads_urls(tmp_path: Path, redis_url: str) -> None:
    assert open_store(str(tmp_path / "a.db")).kind == "sqlite"
    redis_store = open_store(redis_url + "?prefix=x1:")
    assert isinstance(redis_store, RedisStore) and redis_store.prefix == "x1:"
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store("sqlite://")
