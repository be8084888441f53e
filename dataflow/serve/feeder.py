"""The consumer that keeps the store current: deltas and segment transitions from Kafka,
applied in batches with their offsets, in a child process of its own."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from prometheus_client import (
    disable_created_metrics,
    generate_latest,
)

from dataflow.serve.metrics import ConsumerMetrics
from dataflow.serve.store import (
    Batch,
    KafkaTombstone,
    ProfileStore,
    Record,
    open_store,
)
from operators.apps.segments import SegmentTransition
from operators.profile import delta_from_json

log = logging.getLogger(__name__)
_status_json = msgspec.json.Encoder().encode
disable_created_metrics()

ENV_PREFIX = "PROFILESTREAM_"
#: Item models with at least this many items are served through an ANN index (faiss HNSW).
ANN_MIN_ITEMS = 20_000
MAX_K = 100
#: How long the brokers may not answer before a caught-up ``serve`` turns unready. The lag is
#: asked for every second; librdkafka reconnects within a few.
BROKER_SILENCE_S = 10.0


# -- Kafka -> store --------------------------------------------------------------------------


class ConsumerStatus(msgspec.Struct):
    """The consumer, as ``/healthz`` reports it."""

    running: bool
    assignment: str
    partitions: int
    lag: int  # messages on the assigned partitions not yet in the store
    lag_by_partition: dict[str, int]
    caught_up: bool  # the lag has been 0 since the start (the store is complete)
    last_batch_age_s: float | None
    error: str | None = None
    #: Seconds since a broker last answered (``None``: none has yet); over
    #: :data:`BROKER_SILENCE_S`, the store can fall behind unseen: serve is not ready.
    broker_silent_s: float | None = None

    @property
    def broker_reachable(self) -> bool:
        return self.broker_silent_s is not None and self.broker_silent_s <= BROKER_SILENCE_S


@dataclass
class StoreFeeder:
    """Consume the deltas and segments topics into ``store``, one transaction per batch.

    A message's offset is committed only with the batch that applied it; bad values are
    counted (``invalid``) and skipped, never fatal; a store that fails is retried with the
    same batch until it answers, so nothing is skipped either.
    """

    store: ProfileStore
    metrics: ConsumerMetrics
    brokers: str
    deltas_topic: str
    segments_topic: str
    assignment: Literal["all", "group"] = "all"
    group_id: str = ""
    batch_size: int = 500
    batch_wait_s: float = 0.02
    kafka_properties: dict[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.group_id = self.group_id or f"profilestream-serve-{self.store.store_id()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._consumer: Consumer | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._positions: dict[tuple[str, int], int] = {}
        self._lag: dict[tuple[str, int], int] = {}
        self._caught_up = False
        self._last_batch: float | None = None
        self._next_lag_check = 0.0
        self._next_metadata_check = 0.0
        self._broker_answered: float | None = None
        self.error: str | None = None

    def start(self) -> None:
        """Run in a thread of this process (:class:`FeederProcess` runs it in its own)."""
        self._thread = threading.Thread(target=self.run, name="serve-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def exposition(self) -> bytes:
        return generate_latest(self.metrics.registry)

    def status(self) -> ConsumerStatus:
        lag, answered = dict(self._lag), self._broker_answered
        return ConsumerStatus(
            running=self._running,
            assignment=self.assignment,
            partitions=len(self._assigned),
            lag=sum(lag.values()),
            lag_by_partition={f"{t}/{p}": n for (t, p), n in sorted(lag.items())},
            caught_up=self._caught_up,
            last_batch_age_s=None if self._last_batch is None else self.clock() - self._last_batch,
            error=self.error,
            broker_silent_s=None if answered is None else self.clock() - answered,
        )

    def run(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        """Consume until :meth:`stop` or ``should_stop()``; ``on_tick`` after each poll."""
        self._running = True
        try:
            self._consume(should_stop, on_tick)
        except Exception as exc:  # reported by /healthz (503) and the log
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the serve consumer stopped")
        finally:
            self._running = False
            if self._consumer is not None:
                self._consumer.close()

    def _consume(self, should_stop: Callable[[], bool], on_tick: Callable[[], None]) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            # A replica that died gives its partitions up after 10 s (librdkafka: 45 s).
            "session.timeout.ms": 10_000,
            "log_level": 3,
            **self.kafka_properties,
        }
        consumer = self._consumer = Consumer(conf)
        topics = [self.deltas_topic, self.segments_topic]
        if self.assignment == "group":
            consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        while not self._stop.is_set() and not should_stop():
            on_tick()
            if self.assignment == "all" and self.clock() >= self._next_metadata_check:
                self._assign_all(consumer, topics)
            messages = consumer.consume(self.batch_size, self.batch_wait_s)
            if messages:
                self._apply(consumer, messages)
            if self.clock() >= self._next_lag_check:
                self._update_lag(consumer)

    def _assign_all(self, consumer: Consumer, topics: list[str]) -> None:
        """Read every partition of both topics (checked again every 30 s for new ones)."""
        self._next_metadata_check = self.clock() + 30.0
        try:
            metadata = consumer.list_topics(timeout=5)
        except Exception as exc:
            self.metrics.consumer_errors.labels("metadata").inc()
            log.warning("serve: no topic metadata yet (%s)", exc)
            self._next_metadata_check = self.clock() + 1.0
            return
        self._broker_answered = self.clock()
        wanted = {
            (name, p)
            for name in topics
            if name in metadata.topics and metadata.topics[name].error is None
            for p in metadata.topics[name].partitions
        }
        if len(wanted) < 2 or not {t for t, _ in wanted} >= set(topics):
            self._next_metadata_check = self.clock() + 1.0  # a topic is not there yet
        new = wanted - self._assigned
        if new:
            stored = self.store.committed_offsets()
            consumer.incremental_assign(
                [TopicPartition(t, p, stored.get((t, p), OFFSET_BEGINNING)) for t, p in new]
            )
            self._assigned |= new

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self.store.committed_offsets()
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._lag = {}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = set()
        self._lag = {}

    def _apply(self, consumer: Consumer, messages: list[Message]) -> None:
        records: list[Record] = []
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self.metrics.consumer_errors.labels("kafka").inc()
                    log.warning("serve: consumer error %s", error)
                continue
            topic, partition = str(message.topic()), int(message.partition() or 0)
            offsets[(topic, partition)] = int(message.offset() or 0) + 1
            self.metrics.messages.labels(topic).inc()
            record = self._decode(topic, message)
            if record is not None:
                records.append(record)
        if not offsets:
            return
        batch = Batch(records, offsets)
        backoff = 0.1
        while True:
            started = time.perf_counter()
            try:
                result = self.store.apply(batch)
                break
            except Exception as exc:  # the store is down: keep the batch, retry
                self.error = f"store: {type(exc).__name__}: {exc}"
                self.metrics.consumer_errors.labels("store").inc()
                log.warning("serve: store write failed (%s); retrying", exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
        self.error = None
        self.metrics.observe(result, time.perf_counter() - started)
        self._positions.update(offsets)
        self._last_batch = self.clock()
        # For lag dashboards only: restarts resume from the store's own offsets.
        commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        with contextlib.suppress(Exception):
            consumer.commit(offsets=commit, asynchronous=True)
        self._update_lag(consumer, cached_only=True)

    def _decode(self, topic: str, message: Message) -> Record | None:
        value = message.value()
        try:
            if topic == self.deltas_topic:
                if value is None:
                    key = message.key()
                    if not key:
                        raise ValueError("a null value without a key")
                    return KafkaTombstone(key.decode() if isinstance(key, bytes) else str(key))
                return delta_from_json(value)
            if value is None:
                raise ValueError("a null segment transition")
            return _decode_transition(value)
        except (msgspec.DecodeError, ValueError, UnicodeDecodeError) as exc:
            label = self.metrics.deltas if topic == self.deltas_topic else self.metrics.transitions
            label.labels("invalid").inc()
            log.warning("serve: skipped an invalid message at %s/%s@%s: %s",
                        topic, message.partition(), message.offset(), exc)  # fmt: skip
            return None

    def _update_lag(self, consumer: Consumer, cached_only: bool = False) -> None:
        """Lag = the partition's high watermark - the next offset to apply (cached
        watermarks after each batch; the brokers' own once a second)."""
        if not cached_only:
            self._next_lag_check = self.clock() + 1.0
            if not self._assigned:  # nothing to ask the lag of: is a broker there at all?
                with contextlib.suppress(Exception):
                    consumer.list_topics(timeout=1)
                    self._broker_answered = self.clock()
        stored: dict[tuple[str, int], int] | None = None
        for topic, partition in list(self._assigned):
            tp = TopicPartition(topic, partition)
            try:
                _low, high = consumer.get_watermark_offsets(tp, timeout=1, cached=cached_only)
            except Exception:
                continue
            if not cached_only:
                self._broker_answered = self.clock()
            if high < 0:
                continue
            position = self._positions.get((topic, partition))
            if position is None:
                stored = self.store.committed_offsets() if stored is None else stored
                position = stored.get((topic, partition), _low if _low >= 0 else 0)
            lag = max(high - position, 0)
            self._lag[(topic, partition)] = lag
            self.metrics.lag.labels(topic, str(partition)).set(lag)
        if not cached_only and self._assigned and len(self._lag) == len(self._assigned):
            self._caught_up = self._caught_up or not any(self._lag.values())


_decode_transition = msgspec.json.Decoder(SegmentTransition).decode


class Feeder(Protocol):
    """What the API needs of a consumer: start, stop, its status and its metrics."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 10.0) -> None: ...

    def status(self) -> ConsumerStatus: ...

    def exposition(self) -> bytes: ...


@dataclass(frozen=True)
class FeederSettings:
    """Everything a consumer process needs (picklable: it crosses to the child)."""

    store: str
    brokers: str
    deltas_topic: str
    segments_topic: str
    assignment: Literal["all", "group"]
    group_id: str = ""
    batch_size: int = 500
    batch_wait_s: float = 0.02
    kafka_properties: dict[str, str] = field(default_factory=dict)


class FeederProcess:
    """A :class:`StoreFeeder` in a child process, so that decoding and applying deltas runs
    on the other core instead of taking turns with requests for the GIL.

    The child opens the store itself and sends its status and metrics four times a second;
    it exits when asked, or when this process has died (its parent changes), after finishing
    the batch in hand. ``/healthz`` turns ``down`` if the child dies.
    """

    REPORT_EVERY_S = 0.25

    def __init__(self, settings: FeederSettings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.settings = settings
        self._stop = ctx.Event()
        self._conn, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_feeder_main,
            args=(settings, child, self._stop, os.getpid()),
            name="serve-consumer",
            daemon=True,
        )
        self._child_conn = child
        self._status = ConsumerStatus(False, settings.assignment, 0, 0, {}, False, None)
        self._exposition = b""
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._process.start()
        self._child_conn.close()
        self._reader = threading.Thread(target=self._read, name="serve-consumer-reports")
        self._reader.daemon = True
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                status, exposition = self._conn.recv()
            except (EOFError, OSError):
                return
            self._status = msgspec.json.decode(status, type=ConsumerStatus)
            self._exposition = exposition

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def status(self) -> ConsumerStatus:
        alive = self._process.is_alive()
        status = self._status
        if status.running == alive:
            return status
        error = status.error or (None if alive else "the consumer process exited")
        return msgspec.structs.replace(status, running=alive, error=error)

    def exposition(self) -> bytes:
        return self._exposition


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux's PR_SET_PDEATHSIG):
    a killed ``serve`` must not leave its consumer writing to the store for another batch,
    beside the consumer of the ``serve`` that replaces it. The store's transactions keep a
    batch and its offsets together, so dying mid-batch loses nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(0)


_PR_SET_PDEATHSIG = 1


def _feeder_main(settings: FeederSettings, conn: Any, stop: Any, parent_pid: int) -> None:
    """The consumer process: feed the store until told to stop or orphaned."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    store = open_store(settings.store)
    feeder = StoreFeeder(
        store,
        ConsumerMetrics(),
        settings.brokers,
        settings.deltas_topic,
        settings.segments_topic,
        assignment=settings.assignment,
        group_id=settings.group_id,
        batch_size=settings.batch_size,
        batch_wait_s=settings.batch_wait_s,
        kafka_properties=settings.kafka_properties,
    )
    next_report = 0.0

    def report() -> None:
        nonlocal next_report
        now = time.monotonic()
        if now >= next_report:
            next_report = now + FeederProcess.REPORT_EVERY_S
            with contextlib.suppress(OSError):
                conn.send((_status_json(feeder.status()), feeder.exposition()))

    try:
        feeder.run(lambda: stop.is_set() or os.getppid() != parent_pid, report)
        next_report = 0.0
        report()
    finally:
        store.close()
        conn.close()
