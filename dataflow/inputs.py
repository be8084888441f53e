"""Where the flow's events come from: a Kafka topic or JSONL files read as event sources
(:mod:`dataflow.sources`), and the routing of events and markers to the users' workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import DynamicSource, FixedPartitionedSource, Source

from dataflow.clock import Clock, Cluster, route
from dataflow.config import Config
from dataflow.sources import (
    DynamicEventSource,
    EventSource,
    Held,
    JsonlSource,
    KafkaSource,
    Parse,
    PartitionTime,
    SourceItem,
)
from operators.ingest import (
    DeadLetter,
    Event,
    parse_event,
    pii_key,
    pseudonymise,
)

log = logging.getLogger(__name__)


def event_parser(key: bytes) -> Parse:
    """Parse a raw message and hide its IP and device id before anything keeps them."""

    def parse(
        raw: bytes | str, message_key: bytes | None, origin: str, ingest_ms: int, watermark_ms: int
    ) -> Event | DeadLetter:
        item = parse_event(
            raw, key=message_key, source=origin, ingest_ms=ingest_ms, watermark_ms=watermark_ms
        )
        return pseudonymise(item, key) if type(item) is Event else item

    return parse


def read_inputs(
    flow: Dataflow,
    config: Config,
    source: Source | None,
    clock: Clock,
    on_partitions: Callable[[list[str]], None],
    held: Held | None = None,
) -> Stream[SourceItem]:
    """Parsed events, dead letters and event-time markers, in order per input partition;
    no partition reads while ``held()`` says the flow has too much waiting."""
    if not config.pii_secret and config.sink == "kafka":
        log.warning(
            "PROFILESTREAM_PII_SECRET is not set: IPs and device ids are hashed with the public "
            "development secret, which does not protect them"
        )
    parse = event_parser(pii_key(config.pii_secret))
    timing = PartitionTime(config.allowed_lateness_ms, config.idle_partition_ms)
    if source is None and config.source == "kafka":
        topics = [config.events_topic, *([config.labels_topic] if config.labels_topic else [])]
        source = KafkaSource(config.brokers, topics, config.kafka_properties(), config.kafka_tail)
    elif source is None:
        if config.input_path is None:
            raise ValueError("source=file needs input_path")
        labels = [config.labels_path] if config.labels_path is not None else []
        source = JsonlSource([config.input_path, *labels])
    if isinstance(source, DynamicSource):
        events: Source = DynamicEventSource(source, parse, timing, clock, on_partitions, held)
    elif isinstance(source, FixedPartitionedSource):
        events = EventSource(source, parse, timing, clock, on_partitions, held)
    else:
        raise TypeError(f"cannot read events from a {type(source).__name__}")
    if config.source == "kafka":
        return _kafka_in("kafka_in", flow, events)
    return op.input("file_in", flow, events)


@operator
def _kafka_in(step_id: str, flow: Dataflow, source: Source) -> Stream[SourceItem]:
    """The Kafka input, under the step id Bytewax's Kafka operator gave it (so a recovery
    store written before the flow kept event time resumes from its offsets)."""
    return op.input("kafka_input", flow, source)


def route_users(items: list[SourceItem], cluster: Cluster) -> list[tuple[str, Any]]:
    """Key events by user; send each marker to every worker, under its clock key (dead
    letters go their own way)."""
    return route(items, cluster, _user_of)


def _user_of(item: SourceItem) -> str | None:
    return item.user_id if type(item) is Event else None
