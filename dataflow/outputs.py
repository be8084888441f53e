"""Where the flow's outputs go: each stream encoded and keyed as its topic is, to Kafka or to
JSONL files, and counted on the way."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import bytewax.operators as op
import msgspec
from bytewax.connectors.files import FileSink
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Stream
from bytewax.outputs import Sink

from dataflow import metrics
from dataflow.clock import Clock
from dataflow.config import Config
from dataflow.sinks import KafkaOutput, dead_letter_json, dead_letter_message
from operators.apps import (
    Alert,
    DemandReport,
)
from operators.apps.learned_risk import RiskScore
from operators.apps.segments import SegmentTransition
from operators.ingest import (
    DeadLetter,
)
from operators.profile import (
    ProfileDelta,
    delta_to_json,
)

log = logging.getLogger(__name__)


def delta_json(delta: ProfileDelta, clock: Clock) -> bytes:
    """Encode a delta for its sink and count it (kind, size, events, latency)."""
    data = delta_to_json(delta)
    metrics.DELTAS_OUT.labels(delta.kind).inc()
    metrics.DELTA_BYTES.observe(len(data))
    metrics.EVENTS_PER_DELTA.observe(len(delta.event_ids))
    if delta.ingest_ms:
        metrics.EVENT_TO_DELTA_SECONDS.observe(max(clock() - delta.ingest_ms, 0) / 1000)
    return data


@dataclass(frozen=True)
class Outputs:
    """The flow's output streams, each keyed as its topic is."""

    deltas: Stream[ProfileDelta]
    dead: Stream[DeadLetter]
    segments: Stream[SegmentTransition]
    alerts: Stream[Alert]
    demand: Stream[DemandReport]
    risk_scores: Stream[RiskScore]


_json = msgspec.json.Encoder()


Record = SegmentTransition | Alert | DemandReport | RiskScore


def _delta_messages(
    delta: ProfileDelta, topic: str, clock: Clock
) -> list[KafkaSinkMessage[bytes, bytes | None]]:
    """A delta's Kafka message; a tombstone is followed by a Kafka tombstone (same key, no
    value), so a compacted deltas topic drops every record of the erased user."""
    key = delta.user_id.encode()
    message: KafkaSinkMessage[bytes, bytes | None] = KafkaSinkMessage(
        key, delta_json(delta, clock), topic=topic
    )
    if delta.kind != "tombstone":
        return [message]
    return [message, KafkaSinkMessage(key, None, topic=topic)]


def _record_json(record: Record) -> bytes:
    return _json.encode(record)


def _key_of(record: Record) -> str:
    return record.category if isinstance(record, DemandReport) else record.user_id


def route_outputs(
    config: Config,
    outputs: Outputs,
    clock: Clock,
    sinks: Mapping[str, Sink[Any]],
) -> None:
    records: dict[str, Stream[Record]] = {
        "segments": outputs.segments,
        "alerts": outputs.alerts,
        "demand": outputs.demand,
        "risk_scores": outputs.risk_scores,
    }
    if not sinks and config.sink == "kafka":
        topics = {
            "segments": config.segments_topic,
            "alerts": config.alerts_topic,
            "demand": config.demand_topic,
            "risk_scores": config.risk_scores_topic,
        }
        deltas_topic = config.deltas_topic
        messages = [
            op.flat_map_batch(
                "delta_msg",
                outputs.deltas,
                lambda ds: [m for d in ds for m in _delta_messages(d, deltas_topic, clock)],
            ),
            op.map("dlq_msg", outputs.dead, lambda d: dead_letter_message(d, config.dlq_topic)),
        ]
        for name, stream in records.items():
            topic = topics[name]
            messages.append(
                op.map(
                    f"{name}_msg",
                    stream,
                    lambda r, topic=topic: KafkaSinkMessage(  # type: ignore[misc]
                        _key_of(r).encode(), _record_json(r), topic=topic
                    ),
                )
            )
        output = KafkaOutput(
            config.brokers,
            config.kafka_properties(),
            [deltas_topic, config.dlq_topic, *(topics[name] for name in records)],
        )
        op.output("kafka_out", op.merge("to_kafka", *messages), output)
        return
    chosen = dict(sinks)
    if not chosen:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        for name, file_name in OUTPUT_FILES.items():
            (config.output_dir / file_name).touch()
            chosen[name] = FileSink(config.output_dir / file_name)
    if "deltas" in chosen:
        as_lines = op.flat_map_batch(
            "delta_json",
            outputs.deltas,
            lambda ds: [(d.user_id, delta_json(d, clock).decode()) for d in ds],
        )
        op.output("deltas_out", as_lines, chosen["deltas"])
    if "dead_letters" in chosen:
        dead = op.map("dlq_json", outputs.dead, lambda d: ("dlq", dead_letter_json(d)))
        op.output("dlq_out", dead, chosen["dead_letters"])
    for name, stream in records.items():
        if name in chosen:
            lines = op.map(f"{name}_json", stream, lambda r: (_key_of(r), _record_json(r).decode()))
            op.output(f"{name}_out", lines, chosen[name])


#: The files of ``sink=file``, by output name.
OUTPUT_FILES: Final = {
    "deltas": "deltas.jsonl",
    "dead_letters": "dead_letters.jsonl",
    "segments": "segments.jsonl",
    "alerts": "alerts.jsonl",
    "demand": "demand.jsonl",
    "risk_scores": "risk_scores.jsonl",
}
