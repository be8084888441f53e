"""What the tests that run the flow as a process against a real broker share: topics, the
flow process, readers of its output topics, and the pure reference to compare with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message

from dataflow.commands.generator import GeneratedEvent
from dataflow.config import Config
from dataflow.flow import profile_params, shared_embedder
from operators.deltas import ProfileDelta, delta_from_json
from operators.events import Event, parse_event
from operators.privacy import pii_key, pseudonymise
from operators.sentiment import load_sentiment_model
from tests.kafka_broker import KafkaBroker, kafka_flow_args, produce_all
from tests.reference import reference_states

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Topics:
    events: str
    deltas: str
    dlq: str
    segments: str
    alerts: str
    demand: str

    @classmethod
    def create(cls, kafka: KafkaBroker) -> Topics:
        tag = uuid.uuid4().hex[:8]
        names = ("events", "deltas", "dlq", "segments", "alerts", "demand")
        topics = cls(*(f"{name}-{tag}" for name in names))
        for name in names:
            kafka.create_topic(getattr(topics, name), partitions=3)
        return topics

    def config_values(self) -> dict[str, str]:
        """The flow's topic settings (``Config.events_topic`` ...) naming these topics."""
        return {f"{name}_topic": topic for name, topic in asdict(self).items()}


def newest_ts(generated: list[GeneratedEvent]) -> int:
    return max(e.ts_ms for g in generated if isinstance(e := parse_event(g.line), Event))


def reference_at(generated: list[GeneratedEvent], end_ms: int) -> dict:
    model = shared_embedder(Config())
    return reference_states(
        [g.line for g in generated],
        model,
        profile_params(Config(), model.name),
        load_sentiment_model(),  # the flow process runs the shipped default too
        end_ms=end_ms,
    )


def covered(messages: list[Message]) -> int:
    """Distinct events the deltas read so far cover (a restart re-sends some)."""
    return len({(d.user_id, e) for d in deltas_of(messages) for e in d.event_ids})


def produce(kafka: KafkaBroker, topic: str, generated: list[GeneratedEvent]) -> None:
    """Keyed by user id, as producers must, so each user's events stay in order."""
    produce_all(kafka.bootstrap, topic, ((g.user_id.encode(), g.line) for g in generated))


def start_flow(
    kafka: KafkaBroker, topics: Topics, log: Path, metrics_port: int, *extra: str
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "dataflow",
        "run",
        *kafka_flow_args(
            kafka.bootstrap, topics.events, topics.deltas, topics.dlq, 2, metrics_port
        ),
        *("--segments-topic", topics.segments, "--alerts-topic", topics.alerts),
        *("--demand-topic", topics.demand),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


class TopicReader:
    """Reads a topic from the beginning, accumulating every message seen so far."""

    def __init__(self, kafka: KafkaBroker, topic: str) -> None:
        self.messages: list[Message] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap,
                "group.id": f"test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        self._consumer.subscribe([topic])

    def read_until(
        self,
        done: Callable[[list[Message]], bool],
        timeout_s: float,
        flow: subprocess.Popen[bytes] | None = None,
    ) -> list[Message]:
        """Poll until ``done``, the timeout, or (if given) the flow process exiting."""
        deadline = time.monotonic() + timeout_s
        while not done(self.messages) and time.monotonic() < deadline:
            if flow is not None and flow.poll() is not None:
                break
            batch = self._consumer.consume(1000, timeout=0.5)
            self.messages += [m for m in batch if m.error() is None]
        return self.messages

    def read_until_quiet(self, quiet_s: float, timeout_s: float) -> list[Message]:
        """Poll until nothing new has arrived for ``quiet_s`` (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            batch = [m for m in self._consumer.consume(1000, timeout=0.5) if m.error() is None]
            if batch:
                self.messages += batch
                last = time.monotonic()
        return self.messages

    def close(self) -> None:
        self._consumer.close()


def deltas_of(messages: list[Message]) -> list[ProfileDelta]:
    """The deltas; Kafka tombstones (no value, after each JSON tombstone) are skipped."""
    return [delta_from_json(m.value()) for m in messages if m.value() is not None]


def dead_letters_of(messages: list[Message]) -> Counter[tuple[str, bytes]]:
    return Counter((dict(m.headers() or [])["reason"].decode(), m.value()) for m in messages)


def wait_for_exit(process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"flow did not finish in {timeout_s}s:\n{log.read_text()[-3000:]}")
    assert process.returncode == 0, log.read_text()[-3000:]


def expected_events(generated: list[GeneratedEvent]) -> int:
    return sum(g.expected_reason is None for g in generated)


def expected_dead_letters(generated: list[GeneratedEvent]) -> Counter[tuple[str, bytes]]:
    """Rejected lines verbatim; a duplicate (a valid event) with its IP and device hidden."""

    def dead(g: GeneratedEvent) -> bytes:
        event = parse_event(g.line)
        if g.expected_reason != "duplicate_event" or not isinstance(event, Event):
            return g.line
        return pseudonymise(event, pii_key("")).raw  # the flow runs without a secret

    return Counter((g.expected_reason, dead(g)) for g in generated if g.expected_reason)
