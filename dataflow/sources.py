"""Where events come from: Kafka or JSONL files, parsed with their partition's event time.

Two raw sources hand over messages as bytes with their origin (``topic/partition/offset`` or
``file-name:byte_offset``, stable across replays) and resume from a snapshotted position:

* :class:`KafkaSource` -- one librdkafka consumer per topic partition, assigned (no consumer
  group), as Bytewax's own Kafka source does; it also says when a partition has been read
  to its end (so an idle partition can be told from one still catching up) and turns a
  position that retention has deleted into a ``source_error`` dead letter instead of
  skipping silently over what was lost.
* :class:`JsonlSource` -- JSONL files, one partition each. Bytewax's ``FileSource`` decodes
  lines as text, so one invalid UTF-8 byte would crash the flow before validation could
  dead-letter it; this one hands over bytes.

:class:`EventSource` wraps either (or any Bytewax source of ``(line, origin)`` pairs, as the
tests use) and does what every partition needs before the events leave it: parse each
message (:func:`operators.ingest.events.parse_event`, through the flow's ``parse``), stamp it with
its partition's watermark, and send a :class:`~operators.ingest.event_clock.Progress` marker behind
each batch (see :mod:`operators.ingest.event_clock`). Its snapshot holds the raw source's position
and the partition's newest event time together, so a restarted partition resumes both.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import msgspec
from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from dataflow import metrics
from operators.ingest import DeadLetter, Event, PartitionClock, Progress, RejectReason

log = logging.getLogger(__name__)

#: A raw line and its origin: what file and test sources hand over.
RawLine = tuple[bytes | str, str]


class KafkaRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A message as read from Kafka: value, key, origin and the broker's timestamp (0: none)."""

    value: bytes
    key: bytes | None
    origin: str
    timestamp_ms: int


#: What a raw source hands over: lines, Kafka messages, or a source error already explained.
RawItem = RawLine | KafkaRecord | DeadLetter
#: What :class:`EventSource` emits, in order per partition.
SourceItem = Event | DeadLetter | Progress
#: Parse one raw message: (bytes, key, origin, ingest time, partition watermark) -> event.
Parse = Callable[[bytes | str, bytes | None, str, int, int], Event | DeadLetter]


class _Reader(Protocol):
    """What :class:`EventSource` needs of a raw source partition."""

    def next_batch(self) -> Iterable[Any]: ...


# --- Kafka -------------------------------------------------------------------------------


def _kafka_settings(brokers: str, properties: dict[str, str]) -> dict[str, Any]:
    return {
        "bootstrap.servers": brokers,
        "group.id": "profilestream-assigned",  # required by librdkafka; no group is joined
        "enable.auto.commit": False,
        "enable.partition.eof": True,  # to tell a partition read to its end
        "auto.offset.reset": "error",  # a deleted position is reported, not skipped
        "log_level": 3,
        **properties,
    }


class _KafkaPartition(StatefulSourcePartition[KafkaRecord | DeadLetter, int]):
    def __init__(
        self,
        settings: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        tail: bool,
        batch_size: int,
        step_id: str,
    ) -> None:
        self._consumer = Consumer(settings)
        self._tp = TopicPartition(topic, partition, offset)
        self._consumer.assign([self._tp])
        # Resumed after a failure: the run before may have read (and sent the deltas of)
        # messages up to the partition's end as it is now.
        self._replay_until = self._end() if offset != OFFSET_BEGINNING else -1
        self._topic, self._partition = topic, partition
        self._offset = offset
        self._tail = tail
        self._batch_size = batch_size
        self._ended = False
        self.caught_up = False
        self._lag = BYTEWAX_CONSUMER_LAG_GAUGE.labels(step_id, topic, str(partition))
        self._lag_seconds = metrics.INPUT_LAG_SECONDS.labels(topic, str(partition))
        self._last_stamp_ms = 0  # Kafka timestamp of the last message read (0: none)

    def next_batch(self) -> list[KafkaRecord | DeadLetter]:
        if self._ended:
            raise StopIteration
        batch: list[KafkaRecord | DeadLetter] = []
        for message in self._consumer.consume(self._batch_size, 0.001):
            error = message.error()
            if error is None:
                kind, stamp = message.timestamp()
                offset = cast(int, message.offset())
                origin = f"{self._topic}/{self._partition}/{offset}"
                value = message.value() or b""
                stamp = stamp if kind and stamp > 0 else 0
                batch.append(KafkaRecord(value, message.key(), origin, stamp))
                self._last_stamp_ms = stamp or self._last_stamp_ms
                self._offset = offset + 1
                self.caught_up = False
            elif error.code() == KafkaError._PARTITION_EOF:
                self.caught_up = True
                self._ended = not self._tail
            else:
                batch.append(self._source_error(error))
        if batch or self.caught_up:
            self._report_lag()
        return batch

    def _source_error(self, error: KafkaError) -> DeadLetter:
        """A consumer error as a dead letter; a position retention deleted restarts at the
        earliest offset the broker still has, and says what was lost."""
        where = f"{self._topic}/{self._partition}/{self._offset}"
        text = f"{error.name()}: {error.str()}"
        if error.code() == KafkaError._AUTO_OFFSET_RESET:
            low, _high = self._consumer.get_watermark_offsets(self._tp, timeout=10)
            text += (
                f"; offset {self._offset} is gone (retention or truncation): resuming at "
                f"offset {low}, the messages in between are lost"
            )
            self._offset = low
            self._consumer.assign([TopicPartition(self._topic, self._partition, low)])
        log.error("Kafka source %s: %s", where, text)
        return DeadLetter(RejectReason.SOURCE_ERROR.value, text, b"", None, where)

    def _end(self) -> int:
        try:
            return int(self._consumer.get_watermark_offsets(self._tp, timeout=10)[1])
        except KafkaException:  # the broker cannot say: until the partition's end is read
            return 2**62

    @property
    def replaying(self) -> bool:
        """Whether the next messages may have been read before the restart."""
        if self.caught_up:
            self._replay_until = -1
        return self._offset < self._replay_until

    def _report_lag(self) -> None:
        _low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if high >= 0 and self._offset >= 0:
            self._lag.set(max(high - self._offset, 0))
        if self.caught_up or not self._last_stamp_ms:
            self._lag_seconds.set(0)
        else:
            self._lag_seconds.set(max(time.time() - self._last_stamp_ms / 1000, 0.0))

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaSource(FixedPartitionedSource[KafkaRecord | DeadLetter, int]):
    """Every partition of ``topic`` (or of several), from the beginning (or the snapshot's
    offsets).

    ``tail=False`` ends each partition at the end it finds; ``properties`` are extra
    librdkafka settings (SASL, TLS, ...).
    """

    def __init__(
        self,
        brokers: str,
        topic: str | Sequence[str],
        properties: dict[str, str] | None = None,
        tail: bool = True,
        batch_size: int = 1000,
    ) -> None:
        self._settings = _kafka_settings(brokers, properties or {})
        self._topics = [topic] if isinstance(topic, str) else list(topic)
        self._tail = tail
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        parts: list[str] = []
        consumer = Consumer(self._settings)
        try:
            for name in self._topics:
                topic = consumer.list_topics(name, timeout=30).topics.get(name)
                if topic is None or topic.error is not None:
                    raise RuntimeError(f"cannot read topic {name!r}: {topic and topic.error}")
                # Named as Bytewax's Kafka source names them, so its recovery stores resume.
                parts += [f"{p}-{name}" for p in sorted(topic.partitions)]
        finally:
            consumer.close()
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        partition, _, topic = for_part.partition("-")
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _KafkaPartition(
            self._settings, topic, int(partition), offset, self._tail, self._batch_size, step_id
        )


# --- Files -------------------------------------------------------------------------------


class _JsonlPartition(StatefulSourcePartition[RawLine, int]):
    def __init__(self, path: Path, batch_size: int, offset: int) -> None:
        self._path = path
        self._batch_size = batch_size
        self._file = path.open("rb")
        self._file.seek(offset)
        # Resumed after a failure: the run before may have read the rest already.
        self._replay_until = path.stat().st_size if offset else -1

    @property
    def replaying(self) -> bool:
        """Whether the next lines may have been read before the restart."""
        return self._file.tell() < self._replay_until

    def next_batch(self) -> list[RawLine]:
        batch: list[RawLine] = []
        while len(batch) < self._batch_size:
            offset = self._file.tell()
            line = self._file.readline()
            if not line:
                if batch:
                    return batch
                raise StopIteration
            # The file's name alone: read from another folder it is the same input, and
            # every delta carries its profile's first origin.
            batch.append((line.rstrip(b"\r\n"), f"{self._path.name}:{offset}"))
        return batch

    def snapshot(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class JsonlSource(FixedPartitionedSource[RawLine, int]):
    """JSONL files, one partition each, as ``(line bytes, "file name:offset")`` pairs."""

    def __init__(self, paths: Path | Sequence[Path], batch_size: int = 1000) -> None:
        self._paths = [paths] if isinstance(paths, Path) else list(paths)
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [str(path) for path in self._paths]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _JsonlPartition:
        return _JsonlPartition(Path(for_part), self._batch_size, resume_state or 0)


# --- Events with their event time --------------------------------------------------------


class PartitionSnapshot(msgspec.Struct, frozen=True, tag="partition/1"):
    """What an event partition resumes from: the raw source's position and how far the
    partition's event time had got."""

    position: Any
    newest_ms: int


class PartitionTime(msgspec.Struct, frozen=True):
    """The event-time settings every partition shares."""

    lateness_ms: int
    idle_after_ms: int


#: Says whether the flow has too much waiting to take more input now (see ``_EventPartition``).
Held = Callable[[], bool]

#: How often a held partition looks again whether it may read.
HELD_POLL_MS = 20


class _EventPartition:
    """Parse one raw partition's messages and track its event time (shared by both kinds).

    While ``held()`` says so the partition reads nothing, so what waits downstream (users'
    events waiting for a slow or loading model) stops growing: backpressure, as Flink's
    bounded buffers give it. It sends no marker meanwhile either: a held partition is not
    idle, and must not let the watermark pass what it has yet to read.
    """

    def __init__(
        self,
        reader: _Reader,
        channel: str,
        parse: Parse,
        timing: PartitionTime,
        wall: Callable[[], int],
        newest_ms: int = 0,
        held: Held | None = None,
    ) -> None:
        self.reader = reader
        self._parse = parse
        self._wall = wall
        self._held = held
        self.clock = PartitionClock(
            channel, timing.lateness_ms, timing.idle_after_ms, wall(), newest_ms
        )
        self._finished = False
        self._idle = metrics.PARTITION_IDLE.labels(channel)
        self._idle.set(0)
        self._event_time = metrics.PARTITION_EVENT_TIME.labels(channel)
        self._held_seconds = metrics.INPUT_HELD_SECONDS.labels(channel)
        self._held_at_ms: int | None = None  # while held: the wall time it last looked

    def awake_at(self) -> datetime | None:
        """When a held partition should look again (``None``: not held)."""
        if self._held_at_ms is None:
            return None
        return datetime.fromtimestamp((self._held_at_ms + HELD_POLL_MS) / 1000, UTC)

    def next_batch(self) -> list[SourceItem]:
        if self._finished:
            raise StopIteration
        if self._held is not None and self._hold(self._held()):
            return []
        replaying = getattr(self.reader, "replaying", False)
        try:
            raw = list(self.reader.next_batch())
        except StopIteration:
            self._finished = True
            return [self.clock.finish()]
        now = self._wall()
        clock, parse = self.clock, self._parse
        out: list[SourceItem] = []
        types: Counter[str] = Counter()
        for item in raw:
            if type(item) is KafkaRecord:
                ingest = item.timestamp_ms or now
                event = parse(item.value, item.key, item.origin, ingest, clock.watermark_ms)
            elif type(item) is DeadLetter:
                out.append(item)
                continue
            else:
                line, origin = item
                ingest = now
                event = parse(line, None, origin, now, clock.watermark_ms)
            if type(event) is Event:
                clock.stamp(event.ts_ms, ingest)
                types[event.type] += 1
                if replaying:
                    event = msgspec.structs.replace(event, replayed=True)
            out.append(event)
        for event_type, n in types.items():  # once per batch: a labelled counter is costly
            metrics.EVENTS_IN.labels(event_type).inc(n)
        marker = clock.marker(now, getattr(self.reader, "caught_up", False), read=bool(raw))
        if marker is not None:
            out.append(marker)
            self._idle.set(int(marker.state))
            self._event_time.set(marker.newest_ms / 1000)
        return out

    def _hold(self, held: bool) -> bool:
        """Note whether the partition is held now, and count the time it was."""
        if held or self._held_at_ms is not None:
            now = self._wall()
            if self._held_at_ms is not None:
                self._held_seconds.inc((now - self._held_at_ms) / 1000)
            self._held_at_ms = now if held else None
        return held

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()


class _FixedEventPartition(StatefulSourcePartition[SourceItem, PartitionSnapshot]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any], part: _EventPartition) -> None:
        self._inner = inner
        self._part = part

    def next_batch(self) -> list[SourceItem]:
        return self._part.next_batch()

    def next_awake(self) -> Any:
        return self._part.awake_at() or self._inner.next_awake()

    def snapshot(self) -> PartitionSnapshot:
        return PartitionSnapshot(self._inner.snapshot(), self._part.clock.newest_ms)

    def close(self) -> None:
        self._part.close()


class _DynamicEventPartition(StatelessSourcePartition[SourceItem]):
    def __init__(self, inner: StatelessSourcePartition[Any], part: _EventPartition) -> None:
        self._inner = inner
        self._part = part

    def next_batch(self) -> list[SourceItem]:
        return self._part.next_batch()

    def next_awake(self) -> Any:
        return self._part.awake_at() or self._inner.next_awake()

    def close(self) -> None:
        self._part.close()


class EventSource(FixedPartitionedSource[SourceItem, PartitionSnapshot]):
    """Events parsed from a raw source's partitions, each partition followed by markers of
    its event time; ``on_partitions`` learns the names of all partitions (the channels a
    watermark must wait for) before any is read; while ``held()`` is true, no partition
    reads (backpressure: see ``_EventPartition``)."""

    def __init__(
        self,
        inner: FixedPartitionedSource[Any, Any],
        parse: Parse,
        timing: PartitionTime,
        wall: Callable[[], int],
        on_partitions: Callable[[list[str]], None],
        held: Held | None = None,
    ) -> None:
        self._inner = inner
        self._parse = parse
        self._timing = timing
        self._wall = wall
        self._on_partitions = on_partitions
        self._held = held

    def list_parts(self) -> list[str]:
        parts = self._inner.list_parts()
        self._on_partitions(parts)
        return parts

    def build_part(
        self, step_id: str, for_part: str, resume_state: PartitionSnapshot | int | None
    ) -> _FixedEventPartition:
        if isinstance(resume_state, PartitionSnapshot):
            position, newest = resume_state.position, resume_state.newest_ms
        else:  # nothing yet, or a position saved before partitions kept their event time
            position, newest = resume_state, 0
        inner = self._inner.build_part(step_id, for_part, position)
        part = _EventPartition(
            inner, for_part, self._parse, self._timing, self._wall, newest, self._held
        )
        return _FixedEventPartition(inner, part)


class DynamicEventSource(DynamicSource[SourceItem]):
    """:class:`EventSource` for a source with one partition per worker (no snapshots)."""

    def __init__(
        self,
        inner: DynamicSource[Any],
        parse: Parse,
        timing: PartitionTime,
        wall: Callable[[], int],
        on_partitions: Callable[[list[str]], None],
        held: Held | None = None,
    ) -> None:
        self._inner = inner
        self._parse = parse
        self._timing = timing
        self._wall = wall
        self._on_partitions = on_partitions
        self._held = held

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DynamicEventPartition:
        self._on_partitions([f"{step_id}/{i}" for i in range(worker_count)])
        inner = self._inner.build(step_id, worker_index, worker_count)
        channel = f"{step_id}/{worker_index}"
        part = _EventPartition(
            inner, channel, self._parse, self._timing, self._wall, held=self._held
        )
        return _DynamicEventPartition(inner, part)
