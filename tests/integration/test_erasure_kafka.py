"""Erasure on real Kafka: after `delete_user` a compacted deltas topic keeps no record of them."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from bytewax.testing import run_main
from confluent_kafka import Consumer, Producer, TopicPartition

from dataflow.config import Config
from dataflow.flow import build_flow
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.support.kafka_broker import KafkaBroker, produce_all

T0 = 1_717_200_000_000
#: Roll segments quickly and compact at once; drop tombstones 1 s after compaction.
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": "200",
    "min.cleanable.dirty.ratio": "0.001",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "1000",
}


def read_all(kafka: KafkaBroker, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on the topic's single partition, from the start."""
    consumer = Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": uuid.uuid4().hex, "log_level": 0}
    )
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, low)])
    records = []
    deadline = time.monotonic() + 20
    position = low
    while position < high and time.monotonic() < deadline:
        for m in consumer.consume(500, timeout=0.5):
            if m.error() is None:
                records.append((m.key(), m.value()))
                position = (m.offset() or 0) + 1
    consumer.close()
    return records


@pytest.mark.kafka
def test_a_deleted_user_leaves_no_record_on_a_compacted_deltas_topic(kafka: KafkaBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    events, deltas = f"events-{tag}", f"deltas-{tag}"
    kafka.create_topic(events, partitions=1)
    kafka.create_topic(deltas, partitions=1, config=COMPACTED)
    lines = []
    for i in range(6):
        for user in ("alice", "bob"):
            lines.append({"event_id": f"{user}{i}", "user_id": user, "ts": T0 + i * 1000,
                          "type": "view", "item_id": f"i{i}", "category": "c"})  # fmt: skip
    lines.append({"event_id": "bye", "user_id": "alice", "ts": T0 + 9000, "type": "delete_user"})
    produce_all(
        kafka.bootstrap,
        events,
        ((str(e["user_id"]).encode(), json.dumps(e).encode()) for e in lines),
    )
    config = Config(
        source="kafka",
        sink="kafka",
        brokers=kafka.bootstrap,
        events_topic=events,
        deltas_topic=deltas,
        dlq_topic=f"dlq-{tag}",
        segments_topic=f"segments-{tag}",
        alerts_topic=f"alerts-{tag}",
        demand_topic=f"demand-{tag}",
        kafka_tail=False,
        emit_interval_ms=0,
    )
    run_main(build_flow(config, encoder=HashEncoder(), sentiment=WordListSentiment()))

    written = read_all(kafka, deltas)
    alice = [value for key, value in written if key == b"alice"]
    assert alice[-1] is None  # the Kafka tombstone, right after ...
    assert json.loads(alice[-2] or b"")["kind"] == "tombstone"  # ... the JSON one
    assert sum(key == b"bob" for key, _ in written) == 6

    # Compaction runs on closed segments: keep writing (another key) so segments roll.
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        producer.produce(deltas, key=b"filler", value=b"{}")
        producer.flush(10)
        time.sleep(0.5)
        remaining = read_all(kafka, deltas)
        if not any(key == b"alice" for key, _ in remaining):
            break
    assert not any(key == b"alice" for key, _ in remaining), remaining[:5]
    assert sum(key == b"bob" for key, _ in remaining) == 1  # compacted to bob's newest delta
