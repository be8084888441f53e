"""Event time on a 3-partition topic: the same records in every run, demand equal to a recount.

One events topic (generated traffic with fraud episodes, 1% malformed, and a burst of views
planted hours late) is read by three uninterrupted runs that write to topics of their own:
a process of 2 workers, the same again, and a 2-process Bytewax cluster. Every output
topic of each must equal the first's (segment transitions, alerts and demand records as
exact JSON, replays aside; profiles with their versions, segments and RFM groups), and
category demand must equal a recount of the raw events in every bucket: the newest
revision of each bucket, late events included. Kills and a broker outage are
``tests/integration/test_faults.py`` (one process) and
``tests/integration/test_cluster.py`` (the cluster).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow.sim import AnomalyConfig, GeneratedEvent, generate_events
from operators.ingest import Event, parse_event
from operators.ingest.units import HOUR_MS
from tests.support.kafka_broker import KafkaBroker, free_port
from tests.support.kafka_flow import (
    BytewaxCluster,
    FlowOutputs,
    Topics,
    assert_demand_equals_recount,
    assert_same_outputs,
    expected_events,
    produce,
    read_outputs,
    start_flow,
)
from tests.support.server_process import stop_processes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS, N_USERS, SEED = 12_000, 1_000, 61
IDLE_MS = 3_000  # partitions read to their end go idle soon: the runs end sooner
LATE_USER = "u-late-viewer"


def late_views(generated: list[GeneratedEvent]) -> list[GeneratedEvent]:
    """Views of one user planted 3-5 hours behind the stream where they are sent: late for
    demand (corrections of buckets already closed) and for the windows."""
    before = [parse_event(g.line) for g in generated[: len(generated) * 3 // 4]]
    newest = max(e.ts_ms for e in before if isinstance(e, Event))
    lines = [
        {"event_id": f"late{i}", "user_id": LATE_USER, "ts": newest - 5 * HOUR_MS + i * 60_000,
         "type": "view", "item_id": f"i{i % 7}", "category": "Late Category"}
        for i in range(0, 120, 3)
    ]  # fmt: skip
    return [GeneratedEvent(json.dumps(line).encode(), LATE_USER, None) for line in lines]


@pytest.fixture(scope="module")
def generated() -> list[GeneratedEvent]:
    events = list(generate_events(N_EVENTS, N_USERS, seed=SEED, anomalies=AnomalyConfig()))
    at = len(events) * 3 // 4
    return events[:at] + late_views(events) + events[at:]


@pytest.fixture(scope="module")
def events_topic(kafka: KafkaBroker, generated: list[GeneratedEvent]) -> str:
    topics = Topics.create(kafka)
    produce(kafka, topics.events, generated)
    return topics.events


def one_process_run(
    kafka: KafkaBroker, events_topic: str, generated: list[GeneratedEvent], workdir: Path
) -> FlowOutputs:
    topics = Topics.create(kafka, events=events_topic)
    process = start_flow(
        kafka, topics, workdir / "flow.log", free_port(), "--idle-partition-ms", str(IDLE_MS)
    )
    try:
        outputs = read_outputs(
            kafka, topics, expected_events(generated), lambda: process.poll() is None, IDLE_MS
        )
        assert process.poll() is None, (workdir / "flow.log").read_text()[-3000:]
    finally:
        stop_processes(process)
    return outputs


@pytest.fixture(scope="module")
def first(
    kafka: KafkaBroker,
    events_topic: str,
    generated: list[GeneratedEvent],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FlowOutputs]:
    yield one_process_run(kafka, events_topic, generated, tmp_path_factory.mktemp("first"))


def test_demand_equals_a_recount_of_the_events_in_every_bucket(
    first: FlowOutputs, generated: list[GeneratedEvent]
) -> None:
    newest = assert_demand_equals_recount(first, generated)
    assert len(newest) > 2_000
    # The planted late views came as corrections: revisions of buckets already sent.
    late = [r for r in first.reports() if r.category == "Late Category"]
    assert {r.revision for r in late} >= {0, 1, 2}
    assert all(r.actual["views"] == 0 for r in late if r.revision == 0)


def test_two_uninterrupted_runs_send_the_same_records(
    first: FlowOutputs,
    kafka: KafkaBroker,
    events_topic: str,
    generated: list[GeneratedEvent],
    tmp_path: Path,
) -> None:
    again = one_process_run(kafka, events_topic, generated, tmp_path)
    assert_same_outputs(again, first)
    assert first.alerts and first.segments  # the comparison covered records of each kind


def test_a_two_process_cluster_sends_the_same_records_as_one_process(
    first: FlowOutputs,
    kafka: KafkaBroker,
    events_topic: str,
    generated: list[GeneratedEvent],
    tmp_path: Path,
) -> None:
    topics = Topics.create(kafka, events=events_topic)
    cluster = BytewaxCluster(kafka, topics, tmp_path, env={"IDLE_PARTITION_MS": str(IDLE_MS)})
    cluster.start()
    try:
        outputs = read_outputs(kafka, topics, expected_events(generated), cluster.alive, IDLE_MS)
        assert cluster.alive(), cluster.logs()
    finally:
        cluster.stop()
    assert_same_outputs(outputs, first)
