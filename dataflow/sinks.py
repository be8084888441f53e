"""How outputs reach their sinks: dead letters in each format, and the Kafka producer.

On Kafka a dead letter keeps the original message untouched -- same key, same value bytes --
and carries the reason code, error text and origin in headers (``reason``, ``error``,
``source``), so a replay tool can re-produce it verbatim after a fix. In a JSONL file it is
one object per line; the original is ``original`` when it is UTF-8 text, else
``original_b64``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence

import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Gauge

from dataflow import metrics
from operators.ingest import DeadLetter

log = logging.getLogger(__name__)

#: What the flow writes to Kafka: each message names its topic.
OutputMessage = KafkaSinkMessage[bytes | None, bytes | None]


def dead_letter_json(dead: DeadLetter) -> str:
    record: dict[str, str | None] = {
        "reason": dead.reason,
        "error": dead.error,
        "source": dead.source,
        "key": None if dead.key is None else dead.key.decode("utf-8", "replace"),
    }
    try:
        record["original"] = dead.original.decode("utf-8")
    except UnicodeDecodeError:
        record["original_b64"] = base64.b64encode(dead.original).decode("ascii")
    return msgspec.json.encode(record).decode()


def dead_letter_message(dead: DeadLetter, topic: str) -> KafkaSinkMessage[bytes | None, bytes]:
    headers = [
        ("reason", dead.reason.encode()),
        ("error", dead.error.encode()),
        ("source", dead.source.encode()),
    ]
    return KafkaSinkMessage(dead.key, dead.original, topic=topic, headers=headers)


class KafkaDeliveryError(RuntimeError):
    """Kafka refused an output message for good: stop, so the restart re-sends it."""


class KafkaOutput(DynamicSink[OutputMessage]):
    """Every output topic through one idempotent producer per worker; a slow broker slows
    the flow down instead of crashing it.

    Bytewax 0.21's ``KafkaSink`` raises ``BufferError`` as soon as the producer's queue is
    full (``queue.buffering.max.messages``/``kbytes``: a throttled or distant broker, Bytewax
    issue 522) and ignores delivery reports. Here a full queue means waiting for the broker
    to take messages, and a message Kafka gave up on (after ``message.timeout.ms``) stops the
    flow, which then resumes from its last snapshot and sends it again: never a silent loss.
    Each batch is flushed before ``write_batch`` returns, because Bytewax may snapshot the
    epoch as soon as it does: what a snapshot covers has reached the broker. ``topics``, the
    topics the flow will write, are looked up when a worker's producer is built
    (:func:`look_up`); a missing one is a warning at start-up.
    """

    #: How long building a partition waits for each topic's metadata.
    LOOKUP_S = 10.0

    def __init__(
        self, brokers: str, properties: dict[str, str], topics: Sequence[str] = ()
    ) -> None:
        # Idempotent: retries can neither duplicate nor reorder a partition, so consumers
        # see each user's versions in order.
        self.config = {"bootstrap.servers": brokers, "enable.idempotence": "true", **properties}
        self.topics = tuple(topics)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        queue = metrics.SINK_QUEUE_MESSAGES.labels(str(worker_index))
        producer = Producer(self.config)
        for topic in self.topics:
            if not look_up(producer, topic, self.LOOKUP_S):
                break  # the broker did not answer: the others would wait as long for nothing
        return _ProducerPartition(producer, queue)


def look_up(producer: Producer, topic: str, timeout_s: float) -> bool:
    """Learn ``topic``'s partitions and leaders now, so that its first message -- the first
    alert or demand report, maybe hours into a run -- does not hold the worker while the
    producer asks (measured: 100-150 ms per topic); ``False`` if the broker did not answer."""
    try:
        found = producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as error:
        log.warning("Kafka output: cannot look up topic %s: %s", topic, error)
        return False
    if found is None or found.error is not None:
        log.warning(
            "Kafka output: topic %s is not there (%s): create it before the flow writes to it "
            "(a broker that creates topics on demand makes the first message wait for that)",
            topic,
            "unknown" if found is None else found.error.name(),
        )
    return True


class _ProducerPartition(StatelessSinkPartition[OutputMessage]):
    #: How long one wait on a full queue serves delivery reports (frees room) before retrying.
    WAIT_S = 0.05
    #: How often a flush that is still waiting logs how much is left.
    REPORT_S = 10.0

    def __init__(self, producer: Producer, queue: Gauge) -> None:
        self._producer = producer
        self._queue = queue
        self._failures: list[str] = []

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            metrics.SINK_DELIVERY_FAILURES.inc()
            self._failures.append(f"{message.topic()}: {error}")

    def write_batch(self, items: list[OutputMessage]) -> None:
        for item in items:
            self._produce(item)
        self._queue.set(len(self._producer))
        self.flush()

    def _produce(self, item: OutputMessage) -> None:
        if item.topic is None:
            raise ValueError(f"an output message without a topic: {item!r}")
        headers: list[tuple[str, str | bytes | None]] = list(item.headers)
        while True:
            try:
                self._producer.produce(
                    item.topic,
                    item.value,
                    item.key,
                    headers=headers,
                    on_delivery=self._delivered,
                )
                return
            except BufferError:  # the queue is full: let the broker catch up, then retry
                started = time.perf_counter()
                self._producer.poll(self.WAIT_S)
                metrics.SINK_QUEUE_FULL_SECONDS.inc(time.perf_counter() - started)

    def flush(self) -> None:
        started = time.perf_counter()
        while (left := self._producer.flush(self.REPORT_S)) > 0:
            log.warning(
                "Kafka output: %d messages still waiting for the broker after %.0f s",
                left,
                time.perf_counter() - started,
            )
        metrics.SINK_FLUSH_SECONDS.observe(time.perf_counter() - started)
        if self._failures:
            failures, self._failures = self._failures, []
            raise KafkaDeliveryError(
                f"Kafka refused {len(failures)} output messages, e.g. {failures[0]}"
            )

    def close(self) -> None:
        self.flush()
