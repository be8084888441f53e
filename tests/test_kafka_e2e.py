"""End to end on real Kafka: the flow as a separate process with 2 workers and the real model.

Both runs coalesce deltas at the default emit interval. One uninterrupted run checks profiles
against the pure-function reference, every event against exactly one delta, the dead letters
against what the generator made malformed, and the Prometheus counters against what was
sent. A second run is SIGKILLed mid-stream and restarted on its recovery directory; its
materialised profiles must equal the uninterrupted run's, though the restart re-sends deltas
with other boundaries.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message

from dataflow.commands.generator import GeneratedEvent, generate_events
from dataflow.config import Config
from dataflow.flow import profile_params, shared_embedder
from operators.deltas import (
    Applied,
    MaterializedProfile,
    ProfileDelta,
    ProfileView,
    delta_from_json,
    materialize,
)
from operators.events import Event, RejectReason, parse_event
from operators.sentiment import load_sentiment_model
from tests.kafka_broker import KafkaBroker, free_port, kafka_flow_args, produce_all
from tests.reference import assert_profiles_match, reference_states

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS, N_USERS, SEED, MALFORMED = 10_000, 800, 11, 0.015
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Topics:
    events: str
    deltas: str
    dlq: str

    @classmethod
    def create(cls, kafka: KafkaBroker) -> Topics:
        tag = uuid.uuid4().hex[:8]
        topics = cls(f"events-{tag}", f"deltas-{tag}", f"dlq-{tag}")
        for name in (topics.events, topics.deltas, topics.dlq):
            kafka.create_topic(name, partitions=3)
        return topics


@pytest.fixture(scope="module")
def generated() -> list[GeneratedEvent]:
    events = list(generate_events(N_EVENTS, N_USERS, seed=SEED, malformed_rate=MALFORMED))
    # What a JSONL generator cannot write: oversize messages and bytes that are not UTF-8.
    events[5000:5000] = [
        GeneratedEvent(b'{"pad": "' + b"x" * 20_000 + b'"}', "u-big", "too_large"),
        GeneratedEvent(b'{"event_id": "x", "user_id": "\xff\xfe"}', "u-bin", "invalid_json"),
    ]
    assert sum(e.expected_reason is not None for e in events) >= N_EVENTS // 100
    return events


@pytest.fixture(scope="module")
def reference(generated: list[GeneratedEvent]) -> dict:
    model = shared_embedder(Config())
    return reference_states(
        [g.line for g in generated],
        model,
        profile_params(Config(), model.name),
        load_sentiment_model(),  # the flow process runs the shipped default too
    )


def expected_dead_letters(generated: list[GeneratedEvent]) -> Counter[tuple[str, bytes]]:
    return Counter((g.expected_reason, g.line) for g in generated if g.expected_reason)


def expected_events(generated: list[GeneratedEvent]) -> int:
    return sum(g.expected_reason is None for g in generated)


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

    def close(self) -> None:
        self._consumer.close()


def deltas_of(messages: list[Message]) -> list[ProfileDelta]:
    return [delta_from_json(m.value()) for m in messages]


def dead_letters_of(messages: list[Message]) -> Counter[tuple[str, bytes]]:
    return Counter((dict(m.headers() or [])["reason"].decode(), m.value()) for m in messages)


def wait_for_exit(process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"flow did not finish in {timeout_s}s:\n{log.read_text()[-3000:]}")
    assert process.returncode == 0, log.read_text()[-3000:]


@dataclass
class FlowRun:
    deltas: list[ProfileDelta]
    dead_letters: Counter[tuple[str, bytes]]
    metrics: str
    profiles: dict[str, MaterializedProfile]


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
    try:
        want_events, want_dead = expected_events(generated), expected_dead_letters(generated)
        delta_msgs = deltas.read_until(lambda ms: covered(ms) >= want_events, 480, process)
        dead_msgs = dlq.read_until(lambda ms: len(ms) >= sum(want_dead.values()), 60, process)
        assert process.poll() is None, log.read_text()[-3000:]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        run = FlowRun(
            deltas_of(delta_msgs),
            dead_letters_of(dead_msgs),
            metrics.decode(),
            materialize(deltas_of(delta_msgs)),
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        deltas.close()
        dlq.close()
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
    assert_profiles_match(uninterrupted.profiles, reference, params, atol=1e-4)


def test_every_malformed_event_and_nothing_else_is_dead_lettered(
    uninterrupted: FlowRun, generated: list[GeneratedEvent]
) -> None:
    expected = expected_dead_letters(generated)
    assert uninterrupted.dead_letters == expected
    assert {reason for reason, _ in expected} >= {
        r.value for r in RejectReason if r.value != "source_error"
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
    assert metric(text, "profilestream_event_to_delta_seconds_count") == total
    assert metric(text, "profilestream_delta_bytes_count") == total
    covering = sum(len(d.event_ids) for d in uninterrupted.deltas)
    assert metric(text, "profilestream_events_per_delta_sum") == covering
    batches = metric(text, "profilestream_embed_batch_size_count")
    assert batches > 0
    assert metric(text, "profilestream_embed_batch_seconds_count") == batches
    assert metric(text, "profilestream_embed_batch_wait_seconds_count") == batches


def test_sigkill_and_restart_gives_the_uninterrupted_profiles(
    kafka: KafkaBroker,
    generated: list[GeneratedEvent],
    uninterrupted: FlowRun,
    tmp_path: Path,
) -> None:
    """Kill -9 while a burst is being processed; the restart resumes from the last snapshot.

    Bytewax snapshots an epoch once everything read in it is processed, so the flow first
    catches up with part of the stream (its state is then snapshotted every 0.5 s), then a
    burst arrives and the kill lands in the middle of it.
    """
    topics = Topics.create(kafka)
    recovery = ("--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval-s", "0.5")
    head, burst = generated[:4000], generated[4000:]
    want_head, want = expected_events(head), expected_events(generated)
    produce(kafka, topics.events, head)
    deltas = TopicReader(kafka, topics.deltas)
    process = start_flow(kafka, topics, tmp_path / "first.log", free_port(), *recovery)
    deltas.read_until(lambda ms: covered(ms) >= want_head, 300, process)
    time.sleep(2)  # a few idle epochs: the caught-up state is snapshotted
    produce(kafka, topics.events, burst)
    deltas.read_until(lambda ms: covered(ms) >= want_head + (want - want_head) // 4, 300, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    covered_at_kill = covered(deltas.messages)
    assert want_head < covered_at_kill < want, "the kill must land mid-stream"

    written_before_restart = len(deltas.read_until(lambda ms: False, timeout_s=3))

    args = (*recovery, "--no-kafka-tail")
    restarted = start_flow(kafka, topics, tmp_path / "second.log", free_port(), *args)
    wait_for_exit(restarted, tmp_path / "second.log", timeout_s=480)
    all_deltas = deltas_of(deltas.read_until(lambda ms: False, timeout_s=5))
    deltas.close()
    # Starting over would redo every event; resuming after the snapshotted head redoes less.
    redone = sum(len(d.event_ids) for d in all_deltas[written_before_restart:])
    assert redone <= want - want_head, (redone, written_before_restart, want_head, want)
    # The restart coalesced the re-sent events differently: a consumer that saw the first
    # run's deltas never meets a gap and ends on the uninterrupted profiles.
    view = ProfileView()
    assert Applied.GAP not in {view.apply(d) for d in all_deltas}
    profiles = view.profiles
    assert sorted(profiles) == sorted(uninterrupted.profiles)
    for user, profile in uninterrupted.profiles.items():
        again = profiles[user]
        assert (again.version, again.fields) == (profile.version, profile.fields), user
        assert abs(again.interest - profile.interest).max() <= 1e-4, user
    assert covered(deltas.messages) == want  # every event, none lost
    dlq = TopicReader(kafka, topics.dlq)
    dead = dead_letters_of(dlq.read_until(lambda ms: False, timeout_s=5))
    dlq.close()
    assert set(dead) == set(expected_dead_letters(generated))  # at least once each
