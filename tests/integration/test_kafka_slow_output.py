"""A slow deltas topic slows the flow down; it does not crash it (Bytewax issue 522).

Bytewax 0.21's ``KafkaSink`` raises ``BufferError`` when the producer's queue is full, which
happens whenever the broker takes messages slower than the flow makes them. The first test
shows that on a real broker, and that :class:`dataflow.sinks.KafkaOutput` waits instead and
delivers everything in order. The second runs the whole flow with a tiny producer queue
against a broker that throttles the flow's producer (a Kafka client quota).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink
from bytewax.testing import TestingSource, run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from dataflow import metrics
from dataflow.sim import generate_events
from dataflow.sinks import KafkaOutput
from operators.profile import delta_from_json
from tests.support import ROOT
from tests.support.kafka_broker import KafkaBroker, free_port, kafka_flow_args, produce_all

pytestmark = pytest.mark.kafka

#: The deltas of the flow's 1,000 events are a few MB: tens of seconds at this rate.
QUOTA_BYTES_PER_S = 200_000
TINY_QUEUE = {"queue.buffering.max.messages": "10", "linger.ms": "50"}


def read_all(kafka: KafkaBroker, topic: str, quiet_s: float = 3, timeout_s: float = 60) -> list:
    """Every message of ``topic``, read until nothing new comes for ``quiet_s``."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "log_level": 0})  # fmt: skip
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list[Message] = []
    deadline, last = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
            if batch:
                messages += batch
                last = time.monotonic()
    finally:
        consumer.close()
    return messages


def run_sink(sink: Sink, topic: str, n: int) -> None:
    items = [
        KafkaSinkMessage(f"u{i % 7}".encode(), f"{i:06d}".encode() * 300, topic=topic)
        for i in range(n)
    ]
    flow = Dataflow("sink_test")
    op.output("out", op.input("in", flow, TestingSource(items, batch_size=500)), sink)
    run_main(flow)


def test_the_stock_sink_crashes_on_a_full_queue_and_ours_waits(kafka: KafkaBroker) -> None:
    stock_topic, ours_topic = f"stock-{uuid.uuid4().hex[:8]}", f"ours-{uuid.uuid4().hex[:8]}"
    for topic in (stock_topic, ours_topic):
        kafka.create_topic(topic, partitions=3)
    with pytest.raises(Exception) as raised:
        run_sink(KafkaSink([kafka.bootstrap], topic=None, add_config=TINY_QUEUE), stock_topic, 2000)
    assert "BufferError" in repr(raised.value) + repr(raised.value.__cause__)

    waited_before = metrics.SINK_QUEUE_FULL_SECONDS._value.get()
    run_sink(KafkaOutput(kafka.bootstrap, TINY_QUEUE), ours_topic, 2000)
    assert metrics.SINK_QUEUE_FULL_SECONDS._value.get() > waited_before  # it did wait
    messages = read_all(kafka, ours_topic)
    assert len(messages) == 2000  # nothing lost, nothing doubled (idempotent producer)
    by_key: dict[bytes, list[int]] = {}
    for m in messages:
        by_key.setdefault(m.key(), []).append(int(m.value()[:6]))
    assert all(values == sorted(values) for values in by_key.values())  # order kept per key
    assert sorted(v for values in by_key.values() for v in values) == list(range(2000))


def test_the_sink_looks_its_topics_up_when_built_and_warns_of_a_missing_one(
    kafka: KafkaBroker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    there, missing = f"there-{uuid.uuid4().hex[:8]}", f"missing-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(there, partitions=3)
    with caplog.at_level("WARNING", logger="dataflow.sinks"):
        KafkaOutput(kafka.bootstrap, {}, [there, missing]).build("out", 0, 1).close()
    assert f"topic {missing} is not there" in caplog.text
    assert there not in caplog.text
    caplog.clear()
    monkeypatch.setattr(KafkaOutput, "LOOKUP_S", 1.0)
    with caplog.at_level("WARNING", logger="dataflow.sinks"):
        nowhere = KafkaOutput(f"127.0.0.1:{free_port()}", {}, [there, missing])
        nowhere.build("out", 0, 1).close()  # no broker: a warning, and the run goes on
    assert f"cannot look up topic {there}" in caplog.text
    assert missing not in caplog.text  # one wait for an absent broker, not one per topic


@pytest.mark.slow
def test_the_flow_waits_for_a_throttled_deltas_topic(kafka: KafkaBroker, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = {name: f"{name}-{tag}" for name in ("events", "deltas", "dlq")}
    for topic in topics.values():
        kafka.create_topic(topic, partitions=3)
    events = list(generate_events(1000, 100, seed=4, malformed_rate=0.0))
    produce_all(kafka.bootstrap, topics["events"], ((g.user_id.encode(), g.line) for g in events))
    client_id = f"slow-flow-{tag}"
    kafka.throttle_producer(client_id, QUOTA_BYTES_PER_S)
    properties = tmp_path / "kafka.properties"
    lines = [f"{k}={v}" for k, v in {**TINY_QUEUE, "client.id": client_id}.items()]
    properties.write_text("\n".join(lines) + "\n")
    log = tmp_path / "flow.log"
    command = [
        sys.executable, "-m", "dataflow", "run",
        *kafka_flow_args(kafka.bootstrap, topics["events"], topics["deltas"], topics["dlq"], 1,
                         free_port()),
        "--no-kafka-tail", "--kafka-config-file", str(properties),
    ]  # fmt: skip
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=400)
    elapsed = time.monotonic() - started
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "BufferError" not in text
    messages = read_all(kafka, topics["deltas"])
    deltas = [delta_from_json(m.value()) for m in messages]
    covered = {(d.user_id, e) for d in deltas for e in d.event_ids}
    assert len(covered) == sum(g.expected_reason is None for g in events)  # every event
    # The broker held the flow to the quota: it took at least the deltas' bytes / rate.
    sent = sum(len(m.key()) + len(m.value()) for m in messages)
    assert elapsed > 0.8 * sent / QUOTA_BYTES_PER_S, (elapsed, sent)
