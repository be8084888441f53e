"""End to end on real Kafka: the flow as a separate process with 2 workers and the real model.

The run coalesces deltas at the default emit interval. It checks profiles against the
pure-function reference, every event against exactly one delta, the dead letters against
what the generator made malformed, and the Prometheus counters against what was sent; the
segments, alerts and demand topics are checked against the profiles and the events. Kills
and restarts are ``tests/integration/test_faults.py``'s (random SIGKILLs and a broker outage
under a live producer) and ``tests/integration/test_cluster.py``'s (a cluster that loses a
process).
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest
from confluent_kafka import Message

from dataflow.config import Config
from dataflow.factories import profile_params, shared_embedder
from dataflow.sim import DEFAULT_END_MS, GeneratedEvent, generate_events
from operators.apps import Alert, DemandReport
from operators.apps.segments import SegmentTransition, memberships_from_transitions
from operators.ingest import Event, RejectReason, parse_event
from operators.ingest.units import DAY_MS, HOUR_MS
from operators.profile import MaterializedProfile, ProfileDelta, materialize
from tests.support.kafka_broker import KafkaBroker, free_port
from tests.support.kafka_flow import (
    TopicReader,
    Topics,
    covered,
    dead_letters_of,
    deltas_of,
    expected_dead_letters,
    expected_events,
    newest_ts,
    produce,
    reference_at,
    start_flow,
)
from tests.support.reference import assert_profiles_match, users_with_late_events
from tests.support.server_process import stop_processes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS, N_USERS, SEED, MALFORMED = 10_000, 800, 11, 0.015


#: A card-testing burst after an ordinary history: the alerts topic must carry it.
CARD_TESTER = "u-card-tester"


def card_testing_burst(end_ms: int) -> list[GeneratedEvent]:
    lines = []
    start = end_ms - 12 * DAY_MS
    for i in range(20):
        lines.append({"event_id": f"ct{i}", "ts": start + i * DAY_MS // 2, "type": "purchase",
                      "item_id": f"ct-i{i}", "category": "Knits", "price": 40.0 + i})  # fmt: skip
    for i in range(12):
        lines.append({"event_id": f"ct-small{i}", "ts": start + 11 * DAY_MS + i * 10_000,
                      "type": "purchase", "item_id": f"gift{i}", "category": "gift cards",
                      "price": 1.0})  # fmt: skip
    return [
        GeneratedEvent(json.dumps({"user_id": CARD_TESTER, **line}).encode(), CARD_TESTER, None)
        for line in lines
    ]


@pytest.fixture(scope="module")
def generated() -> list[GeneratedEvent]:
    events = list(generate_events(N_EVENTS, N_USERS, seed=SEED, malformed_rate=MALFORMED))
    # What a JSONL generator cannot write: oversize messages and bytes that are not UTF-8.
    events[5000:5000] = [
        GeneratedEvent(b'{"pad": "' + b"x" * 20_000 + b'"}', "u-big", "too_large"),
        GeneratedEvent(b'{"event_id": "x", "user_id": "\xff\xfe"}', "u-bin", "invalid_json"),
    ]
    assert sum(e.expected_reason is not None for e in events) >= N_EVENTS // 100
    return events + card_testing_burst(DEFAULT_END_MS)


@pytest.fixture(scope="module")
def reference(generated: list[GeneratedEvent]) -> dict:
    """What a tailing flow settles on: segment timers run up to the watermark, the newest
    event time less the allowed lateness."""
    return reference_at(generated, newest_ts(generated) - Config().allowed_lateness_ms)


@dataclass
class FlowRun:
    deltas: list[ProfileDelta]
    dead_letters: Counter[tuple[str, bytes]]
    metrics: str
    profiles: dict[str, MaterializedProfile]
    segments: list[Message]
    alerts: list[Message]
    demand: list[Message]


@pytest.fixture(scope="module")
def uninterrupted(
    kafka: KafkaBroker, generated: list[GeneratedEvent], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowRun]:
    """One tailing run over all events; scrape /metrics once every output has arrived."""
    topics = Topics.create(kafka)
    produce(kafka, topics.events, generated)
    port = free_port()
    log = tmp_path_factory.mktemp("flow") / "flow.log"
    process = start_flow(kafka, topics, log, port)
    deltas, dlq = TopicReader(kafka, topics.deltas), TopicReader(kafka, topics.dlq)
    records = [TopicReader(kafka, t) for t in (topics.segments, topics.alerts, topics.demand)]
    try:
        want_events, want_dead = expected_events(generated), expected_dead_letters(generated)
        deltas.read_until(lambda ms: covered(ms) >= want_events, 480, process)
        # Then segment timers catch up with the watermark: wait until the flow is quiet.
        delta_msgs = deltas.read_until_quiet(quiet_s=6, timeout_s=120)
        dead_msgs = dlq.read_until(lambda ms: len(ms) >= sum(want_dead.values()), 60, process)
        segments, alerts, demand = (r.read_until_quiet(quiet_s=2, timeout_s=60) for r in records)
        assert process.poll() is None, log.read_text()[-3000:]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        run = FlowRun(
            deltas_of(delta_msgs),
            dead_letters_of(dead_msgs),
            metrics.decode(),
            materialize(deltas_of(delta_msgs)),
            segments,
            alerts,
            demand,
        )
    finally:
        stop_processes(process)
        for reader in (deltas, dlq, *records):
            reader.close()
    yield run


def test_profiles_equal_the_pure_reference(
    uninterrupted: FlowRun, reference: dict, generated: list[GeneratedEvent]
) -> None:
    deltas = uninterrupted.deltas
    assert len(deltas) == len({(d.user_id, d.version) for d in deltas})
    # every valid event in exactly one delta, and far fewer deltas than events
    events = Counter((d.user_id, e) for d in deltas for e in d.event_ids)
    assert set(events.values()) == {1} and len(events) == expected_events(generated)
    assert len(deltas) < len(events) / 2
    params = profile_params(Config(), shared_embedder(Config()).name)
    late = users_with_late_events([g.line for g in generated], Config().allowed_lateness_ms)
    assert len(late) < 30  # the generator's few very late events
    assert_profiles_match(uninterrupted.profiles, reference, params, atol=1e-4, late_users=late)


def test_every_malformed_event_and_nothing_else_is_dead_lettered(
    uninterrupted: FlowRun, generated: list[GeneratedEvent]
) -> None:
    expected = expected_dead_letters(generated)
    assert uninterrupted.dead_letters == expected
    # Every parse-time reason and duplicates occur; broker errors and the refusals of erased
    # users and of events beyond the de-duplication memory have tests of their own.
    elsewhere = {"source_error", "erased_user", "beyond_dedupe_memory"}
    assert {reason for reason, _ in expected} >= {
        r.value for r in RejectReason if r.value not in elsewhere
    }


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)]
    assert values, f"{prefix!r} not in /metrics"
    return sum(values)


def test_metrics_count_what_was_sent(
    uninterrupted: FlowRun, generated: list[GeneratedEvent]
) -> None:
    text = uninterrupted.metrics
    parsed = [parse_event(g.line) for g in generated]
    by_type = Counter(e.type for e in parsed if isinstance(e, Event))
    for event_type, count in by_type.items():
        assert metric(text, "profilestream_events_total", type=event_type) == count
    by_reason = Counter(reason for reason, _ in expected_dead_letters(generated).elements())
    for reason, count in by_reason.items():
        assert metric(text, "profilestream_dead_letters_total", reason=reason) == count
    kinds = Counter(d.kind for d in uninterrupted.deltas)
    for kind, count in kinds.items():
        assert metric(text, "profilestream_deltas_total", kind=kind) == count
    total = len(uninterrupted.deltas)
    # A change the event clock alone made (a quiet user lapsing) covers no event, so it has
    # no event-to-delta latency; every other delta has one.
    clock_made = [d for d in uninterrupted.deltas if not d.event_ids]
    assert all(not d.ingest_ms for d in clock_made)
    with_latency = total - len(clock_made)
    assert metric(text, "profilestream_event_to_delta_seconds_count") == with_latency
    assert metric(text, "profilestream_delta_bytes_count") == total
    covering = sum(len(d.event_ids) for d in uninterrupted.deltas)
    assert metric(text, "profilestream_events_per_delta_sum") == covering
    batches = metric(text, "profilestream_embed_batch_size_count")
    assert batches > 0
    assert metric(text, "profilestream_embed_batch_seconds_count") == batches
    assert metric(text, "profilestream_embed_batch_wait_seconds_count") == batches


def test_segments_alerts_and_demand_reach_their_topics(
    uninterrupted: FlowRun, generated: list[GeneratedEvent]
) -> None:
    # Segments: keyed by user; replayed in order, they give the profiles' memberships.
    transitions = [
        msgspec.json.decode(m.value() or b"", type=SegmentTransition)
        for m in uninterrupted.segments
    ]
    assert all(
        m.key() == t.user_id.encode()
        for m, t in zip(uninterrupted.segments, transitions, strict=True)
    )
    held = {u: set(p.fields["segments"]) for u, p in uninterrupted.profiles.items()}
    assert memberships_from_transitions(transitions) == {u: s for u, s in held.items() if s}
    assert {t.segment for t in transitions} >= {"new_users", "high_value"} | {
        f"rfm:{g}" for g in ("champions", "new_customers")
    }
    # Alerts: keyed by user; the planted card-testing burst is caught once.
    alerts = [msgspec.json.decode(m.value() or b"", type=Alert) for m in uninterrupted.alerts]
    assert all(
        m.key() == a.user_id.encode() for m, a in zip(uninterrupted.alerts, alerts, strict=True)
    )
    caught = [a for a in alerts if a.user_id == CARD_TESTER and a.kind == "card_testing"]
    assert len(caught) == 1 and set(caught[0].event_ids) <= {f"ct-small{i}" for i in range(12)}
    # Demand: keyed by category; each category's buckets as they closed, consecutive hours;
    # the newest revision of each (late events added) counts no more than the events hold.
    reports = [
        msgspec.json.decode(m.value() or b"", type=DemandReport) for m in uninterrupted.demand
    ]
    assert reports and all(
        m.key() == r.category.encode() for m, r in zip(uninterrupted.demand, reports, strict=True)
    )
    events = [e for g in generated if isinstance(e := parse_event(g.line), Event)]
    units: Counter[tuple[str | None, int]] = Counter()
    for e in {(e.user_id, e.event_id): e for e in events}.values():  # a re-send counts once
        if e.type == "purchase":
            units[e.category, e.ts_ms // HOUR_MS] += e.quantity
    by_category: dict[str, list[DemandReport]] = {}
    newest: dict[tuple[str, int], DemandReport] = {}
    for r in reports:
        if r.revision == 0:
            by_category.setdefault(r.category, []).append(r)
        if r.revision >= getattr(newest.get((r.category, r.bucket_start_ms)), "revision", 0):
            newest[r.category, r.bucket_start_ms] = r
    for category, rs in by_category.items():
        starts = [r.bucket_start_ms for r in rs]
        assert starts == list(range(starts[0], starts[-1] + 1, 3_600_000)), category
        assert all(len(r.forecast) == 24 for r in rs)
    reported = 0.0
    for (category, start), r in newest.items():
        assert r.actual["units"] <= units[category, start // HOUR_MS]
        reported += r.actual["units"]
    closed = sum(
        n for (c, hour), n in units.items() if c in by_category
        and by_category[c][0].bucket_start_ms // HOUR_MS <= hour
        <= by_category[c][-1].bucket_start_ms // HOUR_MS
    )  # fmt: skip
    # Only the card tester's purchases of 12 days ago, too old to correct, are missing.
    assert reported >= 0.95 * closed
    assert any(r.revision for r in reports if r.category == "gift cards")  # late: corrections
