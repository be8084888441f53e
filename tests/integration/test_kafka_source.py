"""The Kafka input on a real broker: a position that retention deleted is a dead letter.

A flow that stops, and resumes from its recovery store after retention has deleted
messages it had not read yet, must not skip them silently (librdkafka's ``earliest``
reset would): each such partition sends a ``source_error`` dead letter naming the offset
it could not read and where it went on, and the flow reads on from the earliest message
the broker still has.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from dataflow.sim import GeneratedEvent, generate_events
from tests.support.kafka_broker import KafkaBroker, free_port
from tests.support.kafka_flow import (
    TopicReader,
    Topics,
    deltas_of,
    header,
    produce,
    start_flow,
    wait_for_exit,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KEEP = 40  # messages per partition that survive "retention"


def event_ids_from(kafka: KafkaBroker, topic: str, starts: dict[int, int]) -> set[str]:
    """The event ids in ``topic`` from each partition's ``starts`` offset to its end."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "reader",
                         "enable.partition.eof": True, "log_level": 0})  # fmt: skip
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    ids: set[str] = set()
    ended: set[int | None] = set()
    while len(ended) < len(starts):
        for message in consumer.consume(500, timeout=1):
            if message.error() is not None:
                ended.add(message.partition())
            else:
                ids.add(json.loads(message.value() or b"")["event_id"])
    consumer.close()
    return ids


def test_a_position_that_retention_deleted_is_a_source_error_and_reading_goes_on(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    topics = Topics.create(kafka)
    generated = list(generate_events(1_200, 150, seed=5, malformed_rate=0.0))
    first: list[GeneratedEvent] = generated[:600]
    recovery = ("--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval-s", "0.5")
    produce(kafka, topics.events, first)
    run = start_flow(
        kafka, topics, tmp_path / "first.log", free_port(), "--no-kafka-tail", *recovery
    )
    wait_for_exit(run, tmp_path / "first.log", 300)

    produce(kafka, topics.events, generated[600:])
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap, "log_level": 0})
    probe = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "probe", "log_level": 0})
    ends = {p: probe.get_watermark_offsets(TopicPartition(topics.events, p))[1] for p in range(3)}
    probe.close()
    starts = {p: end - KEEP for p, end in ends.items()}
    deleted = admin.delete_records([TopicPartition(topics.events, p, o) for p, o in starts.items()])
    for future in deleted.values():
        future.result(timeout=30)

    dlq, deltas = TopicReader(kafka, topics.dlq), TopicReader(kafka, topics.deltas)
    run = start_flow(
        kafka, topics, tmp_path / "second.log", free_port(), "--no-kafka-tail", *recovery
    )
    wait_for_exit(run, tmp_path / "second.log", 300)
    dead = dlq.read_until(lambda ms: len(ms) >= 3, timeout_s=30)
    deltas.read_until(lambda ms: False, timeout_s=5)
    dlq.close()
    deltas.close()

    errors = [m for m in dead if header(m, "reason") == "source_error"]
    assert len(errors) == 3 == len(dead), [m.headers() for m in dead]
    for message in errors:
        topic, partition, offset = header(message, "source").rsplit("/", 2)
        assert topic == topics.events and int(offset) < starts[int(partition)]
        text = header(message, "error")
        assert f"resuming at offset {starts[int(partition)]}" in text and "lost" in text
    # It read on from what the broker still had, and only that.
    covered = {e for d in deltas_of(deltas.messages) for e in d.event_ids}
    kept = event_ids_from(kafka, topics.events, starts)
    lost = {json.loads(g.line)["event_id"] for g in generated[600:]} - kept
    assert kept <= covered and lost and not lost & covered
    assert {json.loads(g.line)["event_id"] for g in first} <= covered
