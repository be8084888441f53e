"""The real dataflow under bytewax.testing: outputs, ordering, coalescing, windows, recovery."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.inputs import AbortExecution, DynamicSource, StatelessSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflow.config import Config
from dataflow.factories import profile_params
from dataflow.flow import build_flow
from dataflow.sources import JsonlSource
from operators.ingest import Event, parse_event
from operators.profile import Applied, ProfileDelta, ProfileView, delta_from_json, materialize
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.support.reference import assert_profiles_match, reference_states
from tests.unit.profile.test_windows import brute_force

T0 = 1_714_564_800_000
# One delta per event: the flow is deterministic, like the reference.
CONFIG = Config(embed_batch_size=4, embed_max_wait_ms=1, full_every=5, emit_interval_ms=0)
# Coalescing with an interval longer than any test: every user's changes go out at the end.
COALESCING = CONFIG.replace(emit_interval_ms=600_000)
PARAMS = profile_params(CONFIG, "hash-encoder")


def stream(n: int, users: int = 7, late_every: int = 0) -> list[str]:
    kinds = ["search", "view", "purchase", "login", "review", "click"]
    lines = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        ts = T0 + 700_000 * i
        if late_every and i % late_every == 0:
            ts -= 3_000_000 * (i % 3)  # up to 100 minutes late: some within the lateness
        event = {
            "event_id": f"e{i}",
            "user_id": f"u{i % users}",
            "ts": ts,
            "type": kind,
            "item_id": f"i{i % 13}",
            "category": f"c{i % 4}",
            "brand": "b",
            "price": 2.5,
            "text": f"query {i % 9}",
            "rating": 4,
            "session_id": f"s{i // 20}",
        }
        lines.append(json.dumps(event))
    return lines


BAD = ['{"event_id": "x1"', '{"event_id":"x2","user_id":"u1","ts":1,"type":"login"}']


def with_origins(lines: list) -> list:
    """Give each line an origin, as the JSONL and Kafka sources do (markers pass as they are)."""
    return [(line, f"test:{i}") if isinstance(line, str) else line for i, line in enumerate(lines)]


def run_flow(
    lines: list,
    workers: int = 1,
    recovery: Path | None = None,
    config: Config = CONFIG,
    source: Any = None,
) -> tuple[list[ProfileDelta], list[dict]]:
    deltas: list = []
    dead: list = []
    flow = build_flow(
        config.replace(workers=workers),
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        source=source or TestingSource(with_origins(lines), batch_size=5),
        sinks={"deltas": TestingSink(deltas), "dead_letters": TestingSink(dead)},
    )
    recovery_config = RecoveryConfig(str(recovery)) if recovery else None
    # A zero epoch interval snapshots after every input batch, so an abort loses little.
    epoch = timedelta(0)
    if workers == 1:
        run_main(flow, epoch_interval=epoch, recovery_config=recovery_config)
    else:
        cluster_main(
            flow,
            [],
            0,
            worker_count_per_proc=workers,
            epoch_interval=epoch,
            recovery_config=recovery_config,
        )
    return [delta_from_json(v) for _, v in deltas], [json.loads(v) for _, v in dead]


def reference(lines: list[str]) -> dict:
    return reference_states(lines, HashEncoder(), PARAMS, WordListSentiment())


@pytest.mark.parametrize(("workers", "embed_thread"), [(1, "off"), (2, "off"), (2, "on")])
def test_flow_matches_the_pure_reference(workers: int, embed_thread: str) -> None:
    """The same profiles whether the model embeds on the workers' threads or its own."""
    lines = stream(300, late_every=7)
    lines.insert(40, BAD[0])
    lines.insert(90, BAD[1])
    lines.insert(120, lines[30])  # a duplicate of an earlier valid event
    deltas, dead = run_flow(lines, workers, config=CONFIG.replace(embed_thread=embed_thread))
    assert_profiles_match(materialize(deltas), reference(lines), PARAMS, atol=0)
    assert sorted((d["reason"], d["original"]) for d in dead) == sorted(
        [("invalid_json", BAD[0]), ("bad_timestamp", BAD[1]), ("duplicate_event", lines[30])]
    )
    assert len(deltas) == 300  # one per valid event with an interval of 0


@pytest.mark.parametrize("workers", [1, 2])
def test_coalesced_deltas_cover_every_event_once_and_match_the_reference(workers: int) -> None:
    lines = stream(300, late_every=7)
    deltas, _ = run_flow(lines, workers, config=COALESCING)
    assert len(deltas) == 7  # one per user: the interval outlasts the test
    covered = Counter(event_id for d in deltas for event_id in d.event_ids)
    assert covered == Counter(json.loads(line)["event_id"] for line in lines)
    assert_profiles_match(materialize(deltas), reference(lines), PARAMS, atol=0)


def test_windows_through_the_flow_equal_a_brute_force_recomputation() -> None:
    lines = stream(400, users=3, late_every=5)
    profiles = materialize(run_flow(lines, config=COALESCING)[0])
    events = [e for e in map(parse_event, lines) if isinstance(e, Event)]
    late = 0
    for user, profile in profiles.items():
        expected, late_ids = brute_force(
            [e for e in events if e.user_id == user], PARAMS.windows, PARAMS.allowed_lateness_ms
        )
        late += len(late_ids)
        for name, want in expected.items():
            have = dict(profile.fields["windows"][name])
            assert have.pop("spend") == pytest.approx(want.pop("spend"))
            assert have.pop("refunded") == pytest.approx(want.pop("refunded"))
            assert have == want, (user, name)
    assert late > 0  # the stream has events beyond the allowed lateness


def test_every_user_is_updated_in_input_order() -> None:
    lines = stream(400, users=3)
    deltas, _ = run_flow(lines, workers=2)
    sent = [json.loads(line) for line in lines]
    for user in {d.user_id for d in deltas}:
        applied = [event_id for d in deltas if d.user_id == user for event_id in d.event_ids]
        assert applied == [e["event_id"] for e in sent if e["user_id"] == user]
        versions = [d.version for d in deltas if d.user_id == user]
        assert versions == list(range(1, len(versions) + 1))


def test_delete_user_emits_a_tombstone_that_covers_pending_events() -> None:
    lines = stream(20, users=2)
    lines.append(json.dumps({"event_id": "del", "user_id": "u0", "ts": T0, "type": "delete_user"}))
    deltas, _ = run_flow(lines, config=COALESCING)
    (tombstone,) = [d for d in deltas if d.user_id == "u0"]
    assert tombstone.kind == "tombstone"
    assert tombstone.event_ids == [f"e{i}" for i in range(0, 20, 2)] + ["del"]
    assert sorted(materialize(deltas)) == ["u1"]


class _Timed(StatelessSourcePartition[tuple[str, str]]):
    def __init__(self, schedule: list[tuple[float, str]]) -> None:
        self._start = time.monotonic()
        self._schedule = list(schedule)

    def next_batch(self) -> list[tuple[str, str]]:
        if not self._schedule:
            raise StopIteration
        elapsed = time.monotonic() - self._start
        batch: list[tuple[str, str]] = []
        while self._schedule and self._schedule[0][0] <= elapsed:
            _, line = self._schedule.pop(0)
            batch.append((line, f"timed:{len(batch)}:{line[:20]}"))
        return batch

    def next_awake(self) -> datetime | None:
        if not self._schedule:
            return None
        at = self._start + self._schedule[0][0] - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(at, 0))


class TimedSource(DynamicSource[tuple[str, str]]):
    """Lines released at given seconds after the start; the flow idles in between."""

    def __init__(self, schedule: list[tuple[float, str]]) -> None:
        self.schedule = schedule

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Timed:
        return _Timed(self.schedule)


def test_a_quiet_users_change_goes_out_within_the_interval() -> None:
    lines = stream(6, users=2)
    schedule = [(0.0, lines[0]), (0.1, lines[2]), (3.0, lines[1]), (3.0, lines[3])]
    config = CONFIG.replace(emit_interval_ms=1_000)
    deltas, _ = run_flow([], config=config, source=TimedSource(schedule))
    first = next(d for d in deltas if d.user_id == "u0")
    assert first.event_ids == ["e0", "e2"]  # coalesced
    waited = first.processed_ms - first.ingest_ms
    assert 1_000 <= waited <= 1_500, waited  # sent by the timer, long before u1's events came
    assert first.processed_ms < min(d.ingest_ms for d in deltas if d.user_id == "u1")


@pytest.mark.parametrize(("interval_ms", "max_wait_ms"), [(0, 1), (600_000, 1), (600_000, 60_000)])
def test_resume_after_abort_gives_the_uninterrupted_result(
    tmp_path: Path, interval_ms: int, max_wait_ms: int
) -> None:
    # With a long emit interval, changes are still pending when the abort comes; with a long
    # wait, texts are still waiting for the model: only the snapshot can carry them over.
    config = CONFIG.replace(
        emit_interval_ms=interval_ms, embed_max_wait_ms=max_wait_ms, embed_batch_size=1000
    )
    lines = stream(200)
    init_db_dir(tmp_path, 1)
    abort = TestingSource.ABORT()
    interrupted = [*lines[:120], abort, *lines[120:]]
    first, _ = run_flow(interrupted, recovery=tmp_path, config=config)
    assert len(first) <= 120  # it stopped at the abort
    # The restart must resume from the last snapshot (taken every 5 lines), never re-read
    # the start: the lines it must not need are replaced by junk that would be dead-lettered.
    resumed_input = [*["junk"] * 100, *lines[100:120], abort, *lines[120:]]
    second, dead = run_flow(resumed_input, recovery=tmp_path, config=config)
    assert dead == []
    view = ProfileView()
    assert Applied.GAP not in [view.apply(d) for d in [*first, *second]]
    assert_profiles_match(view.profiles, reference(lines), PARAMS, atol=0)
    if interval_ms:  # nothing went out before the abort, so nothing went out twice
        assert first == []
        covered = Counter(event_id for d in second for event_id in d.event_ids)
        assert covered == Counter(json.loads(line)["event_id"] for line in lines)


def test_a_run_resumes_from_the_snapshots_taken_at_the_end_of_its_input(tmp_path: Path) -> None:
    """At the end of the input each user's last snapshot takes its state's bytes rather than
    sharing them (``UserMachine.snapshot``): a later run over more input resumes from it."""
    lines = stream(200)
    init_db_dir(tmp_path, 1)
    first, _ = run_flow(lines[:120], recovery=tmp_path)
    # The source resumes after line 120: the lines before are junk it must not read again.
    second, dead = run_flow([*["junk"] * 120, *lines[120:]], recovery=tmp_path)
    assert dead == []
    view = ProfileView()
    assert Applied.GAP not in [view.apply(d) for d in [*first, *second]]
    assert_profiles_match(view.profiles, reference(lines), PARAMS, atol=0)


class _CrashingJsonl(JsonlSource):
    """JSONL, a batch every 40 ms, that aborts the run once ``crash_after`` lines after a
    snapshot, once their deltas had time to go out: a crash in the middle of an epoch, when
    deltas went out that no snapshot holds."""

    def __init__(self, path: Path, crash_after: int | None) -> None:
        super().__init__(path, batch_size=4)
        self.crash_after = crash_after

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
        part = super().build_part(step_id, for_part, resume_state)
        crash_after = self.crash_after
        since: dict[str, float] = {}  # lines read since the last snapshot; when to crash

        def next_batch() -> list:
            time.sleep(0.04)
            if crash_after is not None and since and since["lines"] >= crash_after:
                since["at"] = since.get("at") or time.monotonic() + 0.3  # the deltas go out
                if time.monotonic() >= since["at"]:
                    raise AbortExecution()
                return []
            batch = type(part).next_batch(part)
            if since:
                since["lines"] += len(batch)
            return batch

        def snapshot() -> int:
            since.clear()  # count again from this snapshot
            since["lines"] = 0
            return type(part).snapshot(part)

        part.next_batch = next_batch  # type: ignore[method-assign]
        part.snapshot = snapshot  # type: ignore[method-assign]
        return part


def test_after_a_crash_the_deltas_of_events_read_again_are_full(tmp_path: Path) -> None:
    # A consumer may hold deltas the crashed run sent after its last snapshot; the resumed
    # run coalesces the same events into other deltas. A patch lists what changed since its
    # base, so a field that changed and changed back would stay as the consumer had it:
    # only full deltas are sure to bring that consumer to the resumed run's versions.
    lines = stream(300, users=4)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "recovery").mkdir()
    init_db_dir(tmp_path / "recovery", 1)
    config = CONFIG.replace(emit_interval_ms=50, full_every=1_000)

    def run(crash_after: int | None) -> list[ProfileDelta]:
        deltas: list = []
        flow = build_flow(
            config,
            encoder=HashEncoder(),
            sentiment=WordListSentiment(),
            source=_CrashingJsonl(path, crash_after),
            sinks={"deltas": TestingSink(deltas)},
        )
        recovery = RecoveryConfig(str(tmp_path / "recovery"))
        run_main(flow, epoch_interval=timedelta(seconds=1.5), recovery_config=recovery)
        return [delta_from_json(v) for _, v in deltas]

    before = run(crash_after=40)
    after = run(crash_after=None)
    assert before and after
    resent = {e for d in before for e in d.event_ids} & {e for d in after for e in d.event_ids}
    assert resent, "the crash must land after deltas no snapshot holds"
    # No patch of the resumed run spans a version a consumer may hold from before the
    # crash: such a consumer would apply it over a state the patch was not made from.
    sent: dict[str, set[int]] = {}
    for d in before:
        sent.setdefault(d.user_id, set()).add(d.version)
    straddling = [
        (d.user_id, d.base_version, d.version)
        for d in after
        if d.kind == "patch" and any(d.base_version < v < d.version for v in sent[d.user_id])
    ]
    assert not straddling, straddling
    assert any(d.kind == "patch" for d in after), "once past the replay, patches again"
    view = ProfileView()
    assert Applied.GAP not in [view.apply(d) for d in [*before, *after]]
    assert_profiles_match(view.profiles, reference(lines), PARAMS, atol=0)


def test_reviews_move_sentiment_and_keywords_in_the_deltas() -> None:
    def review(i: int, category: str, text: str) -> str:
        event = {
            "event_id": f"r{i}",
            "user_id": "u1",
            "ts": T0 + i,
            "type": "review",
            "item_id": f"i{i}",
            "category": category,
            "text": text,
        }
        return json.dumps(event)

    lines = [
        review(0, "shoes", "Great leather boots, love them"),
        review(1, "phones", "Battery died after two days"),
        review(2, "phones", "Screen cracked, refund please"),
    ]
    deltas, _ = run_flow(lines)
    polarity = [d.changed["sentiment"] for d in deltas]
    assert polarity[0] == pytest.approx(0.8)  # WordListSentiment: 0.9 -> 2 * 0.9 - 1
    assert polarity[2] < polarity[1] < polarity[0]
    fields = materialize(deltas)["u1"].fields
    assert fields["category_sentiment"]["shoes"][0] == pytest.approx(0.8)
    assert fields["category_sentiment"]["phones"][0] == pytest.approx(-0.6)
    assert {"leather", "boots"} <= set(deltas[0].changed["keywords"])
    assert {"battery", "screen", "cracked"} <= set(fields["keywords"])
