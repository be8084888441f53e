"""Segments, risk alerts and category demand through the real dataflow (bytewax.testing)."""

from __future__ import annotations

import json
import time
from typing import Any

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflow.config import Config
from dataflow.flow import build_flow
from operators.apps.segments import SegmentTransition, memberships_from_transitions
from operators.ingest import EventTimeSpeed
from operators.ingest.units import DAY_MS, HOUR_MS
from operators.profile import delta_from_json, materialize
from tests.support.fakes import HashEncoder, WordListSentiment

T0 = 1_717_200_000_000  # 2024-06-01T00:00:00Z
CONFIG = Config(embed_batch_size=4, embed_max_wait_ms=1, emit_interval_ms=0)


def event(n: int, user: str, ts: int, kind: str, **fields: Any) -> str:
    return json.dumps({"event_id": f"e{n}", "user_id": user, "ts": ts, "type": kind, **fields})


def run(source: Any, config: Config = CONFIG) -> dict[str, list[Any]]:
    """Run the flow; every output as parsed JSON, in the order it came out."""
    names = ("deltas", "dead_letters", "segments", "alerts", "demand")
    outputs: dict[str, list[Any]] = {n: [] for n in names}
    flow = build_flow(
        config,
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        source=source,
        sinks={name: TestingSink(items) for name, items in outputs.items()},
        # Timers look again after 50-500 ms of wall time, so a test sees them fire.
        timers=lambda: EventTimeSpeed(min_wait_ms=50, max_wait_ms=500),
    )
    run_main(flow)
    return {name: [json.loads(v) for _, v in items] for name, items in outputs.items()}


class _Paced(StatelessSourcePartition[tuple[str, str]]):
    """Emit the first batch, then nothing for ``pause_s`` (timers fire meanwhile), then the rest."""

    def __init__(self, batches: list[list[tuple[str, str]]], pause_s: float) -> None:
        self.batches = batches
        self.pause_s = pause_s
        self.resume_at = 0.0

    def next_batch(self) -> list[tuple[str, str]]:
        if not self.batches:
            raise StopIteration
        if time.monotonic() < self.resume_at:
            return []
        self.resume_at = time.monotonic() + self.pause_s
        return self.batches.pop(0)


class PacedSource(DynamicSource[tuple[str, str]]):
    def __init__(self, batches: list[list[tuple[str, str]]], pause_s: float) -> None:
        self.batches = batches
        self.pause_s = pause_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Paced:
        return _Paced(list(self.batches), self.pause_s)


def test_a_quiet_user_lapses_from_a_timer_while_others_shop() -> None:
    buy = {"item_id": "i1", "category": "c", "price": 20.0}
    first = [(event(0, "quiet", T0, "purchase", **buy), "t:0")]
    for day in range(1, 41):  # somebody else's events move the stream's clock 40 days on
        first.append((event(day, "busy", T0 + day * DAY_MS, "view", item_id="i2"), f"t:{day}"))
    then = [(event(99, "late_comer", T0 + 41 * DAY_MS, "login"), "t:99")]

    # The timer must fire during the pause, the one timing this test depends on: 3 s (was
    # 1.5) leaves room for a slow first test of a session. One CI run failed this test (its
    # message was lost); it did not fail again alone or beside two busy cores.
    out = run(PacedSource([first, then], pause_s=3.0))
    quiet = [t for t in out["segments"] if t["user_id"] == "quiet"]
    lapsed = [t for t in quiet if t["segment"] == "lapsing"]
    assert [(t["direction"], t["event_id"]) for t in lapsed] == [("enter", None)]
    assert lapsed[0]["event_time_ms"] == T0 + 30 * DAY_MS  # exactly when it fell due
    # It came from the timer, before the input ended: before the late comer's first entry.
    order = [(t["user_id"], t["segment"]) for t in out["segments"]]
    assert order.index(("quiet", "lapsing")) < order.index(("late_comer", "new_users"))
    # The profile carries the membership too, in a delta with no new event and a new version.
    profiles = materialize(json.dumps(d).encode() for d in out["deltas"])
    assert "lapsing" in profiles["quiet"].fields["segments"]
    assert profiles["quiet"].version > 1
    # Entries and exits replay to exactly the memberships the profiles hold.
    replayed = memberships_from_transitions(SegmentTransition(**t) for t in out["segments"])
    held = {u: set(p.fields["segments"]) for u, p in profiles.items() if p.fields["segments"]}
    assert replayed == held


def test_a_deleted_user_leaves_every_segment() -> None:
    lines = [
        event(0, "u", T0, "purchase", item_id="i1", category="c", price=5000.0),
        event(1, "u", T0 + 1000, "delete_user"),
    ]
    out = run(TestingSource([(line, f"t:{i}") for i, line in enumerate(lines)]))
    entered = {t["segment"] for t in out["segments"] if t["direction"] == "enter"}
    left = {t["segment"] for t in out["segments"] if t["direction"] == "exit"}
    assert "high_value" in entered and entered == left
    assert memberships_from_transitions(SegmentTransition(**t) for t in out["segments"]) == {}


def test_category_demand_reports_every_hour_with_its_forecast() -> None:
    lines = []
    n = 0
    for hour in range(60):
        for k in range(hour % 5 + 1):  # hour h: h % 5 + 1 purchases of 2 units at 3.0
            ts = T0 + hour * HOUR_MS + k * 1000
            lines.append(event(n, f"u{k}", ts, "purchase", item_id="i", category="tea",
                               price=3.0, quantity=2))  # fmt: skip
            n += 1
        lines.append(event(n, "viewer", T0 + hour * HOUR_MS + 5000, "view", item_id="i",
                           category="tea"))  # fmt: skip
        n += 1
    out = run(TestingSource([(line, f"t:{i}") for i, line in enumerate(lines)]))
    tea = [r for r in out["demand"] if r["category"] == "tea"]
    # The input ended: every hour that ended by the newest event (hour 59, 5 s in) closed.
    assert [r["bucket_start_ms"] for r in tea] == [T0 + h * HOUR_MS for h in range(59)]
    for hour, report in enumerate(tea):
        purchases = hour % 5 + 1
        assert report["actual"] == {
            "views": 1,
            "carts": 0,
            "purchases": purchases,
            "units": 2 * purchases,
            "revenue": 6.0 * purchases,
        }
        assert len(report["forecast"]) == 24 and min(report["forecast"]) >= 0
    assert tea[-1]["predicted"] is not None


def test_a_card_testing_burst_raises_one_alert_through_the_flow() -> None:
    lines = []
    for i in range(20):  # a quiet history of ordinary purchases
        lines.append(event(i, "u", T0 + i * DAY_MS // 2, "purchase", item_id=f"i{i}",
                           category="c", price=40.0 + i))  # fmt: skip
    start = T0 + 11 * DAY_MS
    for i in range(12):  # then a dozen tiny purchases within two minutes
        lines.append(event(100 + i, "u", start + i * 10_000, "purchase", item_id=f"g{i}",
                           category="gift cards", price=1.0))  # fmt: skip
    out = run(TestingSource([(line, f"t:{i}") for i, line in enumerate(lines)]))
    kinds = [a["kind"] for a in out["alerts"]]
    assert kinds.count("card_testing") == 1, kinds
    alert = next(a for a in out["alerts"] if a["kind"] == "card_testing")
    assert set(alert["event_ids"]) <= {f"e{100 + i}" for i in range(12)}
    assert alert["user_id"] == "u" and 0 < alert["score"] <= 1
    assert delta_from_json(json.dumps(out["deltas"][-1])).user_id == "u"


def test_a_resent_event_from_before_a_deletion_does_not_recreate_the_user() -> None:
    lines = [
        event(1, "u", T0, "view", item_id="i1"),
        event(2, "u", T0 + 1000, "purchase", item_id="i1", price=3.0),
        event(3, "u", T0 + 2000, "delete_user"),
        event(1, "u", T0, "view", item_id="i1"),  # a re-send from before the deletion
        event(4, "u", T0 + 5000, "login"),  # the user comes back: a new profile
    ]
    out = run(TestingSource([(line, f"t:{i}") for i, line in enumerate(lines)]))
    assert [(d["reason"], json.loads(d["original"])["event_id"]) for d in out["dead_letters"]] == [
        ("erased_user", "e1")
    ]
    tombstone = next(d for d in out["deltas"] if d["kind"] == "tombstone")
    assert tombstone["reason"] == "deleted"
    profiles = materialize(json.dumps(d).encode() for d in out["deltas"])
    assert profiles["u"].version == 1 and profiles["u"].incarnation.startswith("e4@")


def test_an_inactive_user_expires_with_a_tombstone_and_leaves_their_segments() -> None:
    lines = [event(0, "sleepy", T0, "purchase", item_id="i1", category="c", price=2000.0)]
    for hour in range(1, 60):  # others keep the clock moving for 2.5 days
        lines.append(event(hour, "busy", T0 + hour * HOUR_MS, "view", item_id="i2"))
    lines.append(event(99, "sleepy", T0 - 1000, "view", item_id="i1"))  # a late re-send
    out = run(
        TestingSource([(line, f"t:{i}") for i, line in enumerate(lines)]),
        CONFIG.replace(expire_after_days=1.0),
    )
    sleepy = [d for d in out["deltas"] if d["user_id"] == "sleepy"]
    assert sleepy[-1]["kind"] == "tombstone" and sleepy[-1]["reason"] == "expired"
    assert sleepy[-1]["event_time_ms"] == T0  # dated when they were last seen
    assert [d["reason"] for d in out["dead_letters"]] == ["erased_user"]
    left = {t["segment"] for t in out["segments"] if t["user_id"] == "sleepy"
            and t["direction"] == "exit"}  # fmt: skip
    assert "high_value" in left
    profiles = materialize(json.dumps(d).encode() for d in out["deltas"])
    assert "sleepy" not in profiles and "busy" in profiles


def test_a_quiet_user_whose_last_delta_was_a_patch_settles_on_a_full_one() -> None:
    batches = [
        [(event(0, "u", T0, "view", item_id="i1"), "t:0")],  # a new profile: full delta
        [(event(1, "u", T0 + 1000, "view", item_id="i2"), "t:1")],  # then a patch
        [(event(2, "other", T0 + 2000, "login"), "t:2")],  # after the quiet time
    ]
    out = run(PacedSource(batches, pause_s=1.0), CONFIG.replace(settle_full_after_s=0.3))
    deltas = [d for d in out["deltas"] if d["user_id"] == "u"]
    assert [(d["kind"], d["version"], d["event_ids"]) for d in deltas] == [
        ("full", 1, ["e0"]),
        ("patch", 2, ["e1"]),
        ("full", 2, []),  # the same version, complete: compaction keeps it as the newest
    ]
    # A consumer that saw the patch skips it; one that finds only it (a compacted topic)
    # gets the same profile.
    everything = materialize(json.dumps(d).encode() for d in deltas)
    newest_only = materialize([json.dumps(deltas[-1]).encode()])
    assert newest_only["u"].fields == everything["u"].fields
    assert newest_only["u"].version == everything["u"].version == 2
    # Without the setting (the default) nothing more is sent.
    plain = run(PacedSource(batches, pause_s=1.0), CONFIG)
    assert [d["kind"] for d in plain["deltas"] if d["user_id"] == "u"] == ["full", "patch"]


def test_an_event_older_than_the_dedupe_memory_is_dead_lettered_not_counted() -> None:
    # max_seen_event_ids=64: after 200 events the first blocks of ids are forgotten, and the
    # horizon is the newest time of the forgotten ones; a new id at or before it may be a
    # forgotten duplicate, so it is refused with its reason instead of counted twice.
    lines = [event(i, "u", T0 + i * 60_000, "view", item_id=f"i{i}") for i in range(200)]
    lines.append(event(999, "u", T0 + 5 * 60_000, "view", item_id="old"))  # an old new id
    lines.append(event(1000, "u", T0 + 201 * 60_000, "view", item_id="new"))  # on time
    out = run(
        TestingSource([(line, f"t:{i}") for i, line in enumerate(lines)]),
        CONFIG.replace(max_seen_event_ids=64),
    )
    dead = [(d["reason"], json.loads(d["original"])["event_id"]) for d in out["dead_letters"]]
    assert dead == [("beyond_dedupe_memory", "e999")]
    assert out["dead_letters"][0]["source"] == "t:200"  # where to find it
    covered = {e for d in out["deltas"] for e in d["event_ids"]}
    assert "e999" not in covered and {"e0", "e199", "e1000"} <= covered
