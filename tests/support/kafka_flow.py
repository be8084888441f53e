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

import msgspec
import numpy as np
import pytest
from confluent_kafka import Consumer, Message

from dataflow.cluster_layout import prepare_recovery
from dataflow.config import Config
from dataflow.factories import profile_params, shared_embedder
from dataflow.sim import GeneratedEvent
from operators.apps import DEMAND_TYPES, DemandReport
from operators.apps.segments import SegmentTransition, memberships_from_transitions
from operators.ingest import Event, parse_event, pii_key, pseudonymise, wire_form
from operators.profile import MaterializedProfile, ProfileDelta, delta_from_json, materialize
from operators.text import load_sentiment_model
from tests.support import ROOT
from tests.support.kafka_broker import KafkaBroker, free_port, kafka_flow_args, produce_all
from tests.support.reference import reference_states, vector_atol
from tests.support.server_process import stop_processes


@dataclass
class Topics:
    events: str
    deltas: str
    dlq: str
    segments: str
    alerts: str
    demand: str

    @classmethod
    def create(cls, kafka: KafkaBroker, events: str | None = None) -> Topics:
        """Fresh topics of 3 partitions; ``events`` reads an existing events topic instead."""
        tag = uuid.uuid4().hex[:8]
        names = ("events", "deltas", "dlq", "segments", "alerts", "demand")
        topics = cls(*(f"{name}-{tag}" for name in names))
        if events is not None:
            topics.events = events
        for name in names:
            if events is None or name != "events":
                kafka.create_topic(getattr(topics, name), partitions=3)
        return topics

    def flow_settings(self, kafka: KafkaBroker) -> dict[str, str]:
        """The flow's ``PROFILESTREAM_*`` variables for these topics on ``kafka``."""
        settings = {"SOURCE": "kafka", "SINK": "kafka", "BROKERS": kafka.bootstrap}
        settings |= {f"{name}_TOPIC".upper(): topic for name, topic in asdict(self).items()}
        return {f"PROFILESTREAM_{k}": v for k, v in settings.items()}

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


def values_of(messages: list[Message]) -> list[bytes]:
    """The messages' values; Kafka tombstones (no value) are skipped."""
    return [value for m in messages if (value := m.value()) is not None]


def header(message: Message, name: str) -> str:
    """A header of ``message`` as text (KeyError if it has none of that name)."""
    value = dict(message.headers() or [])[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def deltas_of(messages: list[Message]) -> list[ProfileDelta]:
    """The deltas; Kafka tombstones (no value, after each JSON tombstone) are skipped."""
    return [delta_from_json(value) for value in values_of(messages)]


def dead_letters_of(messages: list[Message]) -> Counter[tuple[str, bytes]]:
    return Counter((header(m, "reason"), m.value() or b"") for m in messages)


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
        return wire_form(pseudonymise(event, pii_key("")))  # the flow runs without a secret

    return Counter((g.expected_reason, dead(g)) for g in generated if g.expected_reason)


@dataclass
class FlowOutputs:
    """Everything a run sent to its output topics (raw values: replays included)."""

    deltas: list[ProfileDelta]
    segments: list[bytes]
    alerts: list[bytes]
    demand: list[bytes]
    dead_letters: Counter[tuple[str, bytes]]

    @property
    def profiles(self) -> dict[str, MaterializedProfile]:
        return materialize(self.deltas)

    def transitions(self) -> list[SegmentTransition]:
        return [msgspec.json.decode(v, type=SegmentTransition) for v in self.segments]

    def reports(self) -> list[DemandReport]:
        return [msgspec.json.decode(v, type=DemandReport) for v in self.demand]


def read_outputs(
    kafka: KafkaBroker,
    topics: Topics,
    want_events: int,
    alive: Callable[[], bool],
    idle_partition_ms: int,
    timeout_s: float = 300,
) -> FlowOutputs:
    """Read every output topic until the deltas cover ``want_events`` events and nothing
    has come for a while: once the partitions have been quiet for ``idle_partition_ms``
    they hold the watermark back no more, and the last segment checks and demand buckets
    follow. Stops early if the flow does."""
    readers = {
        name: TopicReader(kafka, getattr(topics, name))
        for name in ("deltas", "segments", "alerts", "demand", "dlq")
    }
    try:
        deltas = readers["deltas"]
        deadline = time.monotonic() + timeout_s
        while covered(deltas.messages) < want_events and alive():
            if time.monotonic() > deadline:
                break
            deltas.read_until(lambda ms: False, 1.0)
        quiet_s = idle_partition_ms / 1000 + 6
        for reader in readers.values():
            reader.read_until_quiet(quiet_s=quiet_s if reader is deltas else 2, timeout_s=180)
        return FlowOutputs(
            deltas=deltas_of(deltas.messages),
            segments=values_of(readers["segments"].messages),
            alerts=values_of(readers["alerts"].messages),
            demand=values_of(readers["demand"].messages),
            dead_letters=dead_letters_of(readers["dlq"].messages),
        )
    finally:
        for reader in readers.values():
            reader.close()


def assert_same_outputs(got: FlowOutputs, want: FlowOutputs, atol: float = 1e-4) -> None:
    """The same records on every output topic, replays aside, and the same profiles.

    Segment transitions, alerts and demand records compare as sets of their exact JSON;
    profiles field by field, with their version, segments and RFM group; interest vectors
    within ``atol`` (embedding batches of other sizes round differently), and an int8 step.
    """
    for name in ("segments", "alerts", "demand"):
        mine, theirs = set(getattr(got, name)), set(getattr(want, name))
        assert mine == theirs, (
            f"{name}: {len(mine - theirs)} records only in this run, e.g. "
            f"{sorted(mine - theirs)[:2]}; {len(theirs - mine)} only in the other, e.g. "
            f"{sorted(theirs - mine)[:2]}"
        )
    assert memberships_from_transitions(got.transitions()) == memberships_from_transitions(
        want.transitions()
    )
    profiles, expected = got.profiles, want.profiles
    assert sorted(profiles) == sorted(expected)
    encoding = Config().vector_encoding

    def tolerance(profile: MaterializedProfile) -> float:
        return vector_atol(profile.interest, atol, encoding)

    differ = []
    for user, profile in expected.items():
        other = profiles[user]
        same = (
            other.version == profile.version
            and other.incarnation.split("@")[0] == profile.incarnation.split("@")[0]
            and other.fields == profile.fields
            and np.allclose(other.interest, profile.interest, atol=tolerance(profile), rtol=0)
        )
        if not same:
            fields = {
                k: (other.fields.get(k), profile.fields.get(k))
                for k in other.fields.keys() | profile.fields.keys()
                if other.fields.get(k) != profile.fields.get(k)
            }
            differ.append((user, other.version, profile.version, fields))
    assert not differ, f"{len(differ)} profiles differ, e.g. {differ[:2]}"
    assert set(got.dead_letters) == set(want.dead_letters)


def demand_recount(
    generated: list[GeneratedEvent], deltas: list[ProfileDelta], bucket_ms: int = 3_600_000
) -> dict[tuple[str, int], dict[str, float]]:
    """Demand per (category, bucket start) counted from the raw events, once each: those
    the profiles accepted (every event a delta covers), whatever their order or lateness."""
    accepted = {(d.user_id, e) for d in deltas for e in d.event_ids}
    counts: dict[tuple[str, int], dict[str, float]] = {}
    for g in generated:
        event = parse_event(g.line)
        if not isinstance(event, Event) or (event.user_id, event.event_id) not in accepted:
            continue
        accepted.discard((event.user_id, event.event_id))  # a re-send counts once
        if event.category is None or event.type not in DEMAND_TYPES:
            continue
        key = (event.category, event.ts_ms // bucket_ms * bucket_ms)
        bucket = counts.setdefault(key, dict.fromkeys(DEMAND_MEASURES, 0.0))
        if event.type in ("view", "click"):
            bucket["views"] += 1
        elif event.type == "add_to_cart":
            bucket["carts"] += 1
        else:
            bucket["purchases"] += 1
            bucket["units"] += event.quantity
            bucket["revenue"] += (event.price or 0.0) * event.quantity
    return counts


DEMAND_MEASURES = ("views", "carts", "purchases", "units", "revenue")


def assert_demand_equals_recount(
    outputs: FlowOutputs, generated: list[GeneratedEvent]
) -> dict[tuple[str, int], DemandReport]:
    """The newest revision of every bucket a category reported equals the recount, and each
    category's reports hold every counted event up to its last bucket; returns the newest
    revision of each (category, bucket start)."""
    newest: dict[tuple[str, int], DemandReport] = {}
    for report in sorted(outputs.reports(), key=lambda r: r.revision):
        newest[report.category, report.bucket_start_ms] = report
    recount = demand_recount(generated, outputs.deltas)
    zero = dict.fromkeys(DEMAND_MEASURES, 0.0)
    differ = [
        (key, report.actual, recount.get(key, zero))
        for key, report in newest.items()
        if report.actual != pytest.approx(recount.get(key, zero), abs=1e-6)
    ]
    assert not differ, f"{len(differ)} of {len(newest)} buckets differ, e.g. {differ[:3]}"
    last: dict[str, int] = {}
    for category, start in newest:
        last[category] = max(start, last.get(category, start))
    missing = [k for k in recount if k[0] in last and k[1] <= last[k[0]] and k not in newest]
    assert not missing, f"buckets with events but no record: {missing[:5]}"
    assert set(last) == {category for category, _ in recount}
    return newest


class BytewaxCluster:
    """Bytewax processes of one worker each on loopback, as the StatefulSet runs them:
    ``python -m bytewax.run dataflow.flow:flow_from_env -w 1 -i N -a "a;b"``, with the
    recovery partitions spread over the processes' directories by the StatefulSet's init
    container's own code (deploy/README.md, "Scaling out and recovery")."""

    def __init__(
        self,
        kafka: KafkaBroker,
        topics: Topics,
        workdir: Path,
        processes: int = 2,
        recovery_partitions: int = 4,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kafka, self.topics, self.workdir = kafka, topics, workdir
        self.settings = {f"PROFILESTREAM_{k}": v for k, v in (env or {}).items()}
        self.recovery = [workdir / f"recovery-{i}" for i in range(processes)]
        for ordinal, folder in enumerate(self.recovery):
            prepare_recovery(folder, recovery_partitions, processes, ordinal, init=True)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        count = len(self.recovery)
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(count))
        self.processes = []
        for index in range(count):
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                **self.topics.flow_settings(self.kafka),
                **self.settings,
                "BYTEWAX_DATAFLOW_API_ENABLED": "true",
                "BYTEWAX_DATAFLOW_API_PORT": str(free_port()),
                "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(self.workdir),
            }
            command = [
                sys.executable, "-m", "bytewax.run", "dataflow.flow:flow_from_env",
                "-w", "1", "-i", str(index), "-a", addresses,
                "-r", str(self.recovery[index]), "-s", "1", "-b", "0",
            ]  # fmt: skip
            log = self.workdir / f"process-{index}-run-{self.runs}.log"
            with log.open("wb") as out:
                self.processes.append(
                    subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
                )

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(self.workdir.glob("process-*.log"))
        )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        stop_processes(*self.processes)
