"""``profilestream serve``: profiles, segment sizes and recommendations over HTTP, in milliseconds.

Downstream services want a user's profile now, not a topic to replay. ``serve`` consumes the
deltas topic (and the segments topic), keeps every user's newest profile in a
:class:`~operators.profile_store.ProfileStore` -- an embedded SQLite file by default, Redis to
share one store between replicas -- and answers HTTP:

=====================================  ===================================================
``GET /users/{id}``                    the profile: fields (windows and segments included),
                                       version, incarnation; ``?interest=true`` adds the
                                       vector (base64 of little-endian float16, as in deltas)
``GET /users/{id}/recommendations``    top ``?k=`` (1-100, default 10) items of the item model
                                       in ``--item-model-dir`` (hot-reloaded), skipping the
                                       user's recent items; popularity for unknown users
``GET /segments/{name}/size``          members of a segment (``GET /segments``: all of them)
``GET /healthz``                       store, consumer (lag, assignment), item model; 503 when
                                       the consumer died or the store is unreachable
``GET /metrics``                       Prometheus: request latency, store size, consumer lag,
                                       deltas applied / stale / gap / invalid, delta delay
``GET /openapi.json``                  the API's OpenAPI 3.1 description
=====================================  ===================================================

The consumer runs in a child process of its own (decoding and applying deltas would
otherwise take turns with requests for the GIL); the API process only reads the store.
How it stays correct across restarts: records are applied in batches, each batch and the
Kafka offsets after it in one store transaction (SQLite, or Redis ``MULTI``/``EXEC``), and a
(re)starting consumer seeks every partition to the offsets the store holds. Offsets are
committed to the Kafka consumer group only afterwards, for lag dashboards; the store's own
offsets are what a restart resumes from, so a store that lost its last writes (Redis without
``appendfsync always``, SQLite ``synchronous=NORMAL`` after a power cut) re-reads exactly what
it lost. The consumer group is named after the store (``profilestream-serve-<store id>``):
with SQLite every replica has its own file and reads every partition; replicas sharing a
Redis share the group and split the partitions (``--serve-assignment``), or run one consumer
and any number of ``--no-serve-consume`` readers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dataflow.config import Config
from dataflow.model_watch import ModelWatcher
from operators.deltas import delta_from_json
from operators.item_model import (
    ItemModel,
    UserItemMemory,
    load_item_model,
    memory_from_fields,
    update_memory,
)
from operators.profile_store import (
    Batch,
    BatchResult,
    KafkaTombstone,
    ProfileStore,
    Record,
    StoredProfile,
    decode_profile,
    open_store,
)
from operators.recommend import ItemIndex, recommend
from operators.segments import SegmentTransition

log = logging.getLogger(__name__)
disable_created_metrics()

ENV_PREFIX = "PROFILESTREAM_"
#: Item models with at least this many items are served through an ANN index (faiss HNSW).
ANN_MIN_ITEMS = 20_000
MAX_K = 100


# -- metrics ---------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 1)
DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30, 60)


class ServeMetrics:
    """The HTTP side's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, store: ProfileStore) -> None:
        self.registry = r = CollectorRegistry()
        self.request_seconds = Histogram(
            "profilestream_serve_request_seconds",
            "HTTP request latency, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_users = Gauge(
            "profilestream_serve_store_users", "Profiles in the store", registry=r
        )
        self.store_users.set_function(store.size)
        self.item_model = Gauge(
            "profilestream_serve_item_model_info",
            "1 for the item model version served",
            ["version"],
            registry=r,
        )
        self.item_model_loads = Counter(
            "profilestream_serve_item_model_loads",
            "Item model versions loaded, by result (ok, error)",
            ["result"],
            registry=r,
        )


class ConsumerMetrics:
    """The consumer's Prometheus metrics (kept in the consumer's process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.lag = Gauge(
            "profilestream_serve_consumer_lag",
            "Messages not yet applied to the store, by topic and partition",
            ["topic", "partition"],
            registry=r,
        )
        self.deltas = Counter(
            "profilestream_serve_deltas",
            "Deltas consumed, by result: applied, stale (a replay, or of a deleted incarnation), "
            "gap (a patch ahead of the stored version: waiting for the next full delta), invalid",
            ["result"],
            registry=r,
        )
        self.kafka_tombstones = Counter(
            "profilestream_serve_kafka_tombstones",
            "Null-valued deltas (Kafka tombstones), by result: deleted or absent",
            ["result"],
            registry=r,
        )
        self.transitions = Counter(
            "profilestream_serve_segment_transitions",
            "Segment transitions consumed, by direction (enter, exit; invalid)",
            ["direction"],
            registry=r,
        )
        self.delay = Histogram(
            "profilestream_serve_delta_delay_seconds",
            "From the flow emitting a delta (processed_ms) to the store applying it",
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "profilestream_serve_store_batch_seconds",
            "Time to apply one batch to the store (one transaction)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.messages = Counter(
            "profilestream_serve_messages_read",
            "Kafka messages read, by topic",
            ["topic"],
            registry=r,
        )
        self.consumer_errors = Counter(
            "profilestream_serve_consumer_errors",
            "Errors reported by the Kafka consumer (kafka, metadata) or the store (store)",
            ["kind"],
            registry=r,
        )

    def observe(self, result: BatchResult, seconds: float) -> None:
        self.batch_seconds.observe(seconds)
        for name, n in result.deltas.items():
            self.deltas.labels(name).inc(n)
        for name, n in result.kafka_tombstones.items():
            self.kafka_tombstones.labels(name).inc(n)
        for name, n in result.transitions.items():
            self.transitions.labels(name).inc(n)
        for delay_ms in result.delays_ms:
            self.delay.observe(max(delay_ms, 0) / 1000)


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
        lag = dict(self._lag)
        return ConsumerStatus(
            running=self._running,
            assignment=self.assignment,
            partitions=len(self._assigned),
            lag=sum(lag.values()),
            lag_by_partition={f"{t}/{p}": n for (t, p), n in sorted(lag.items())},
            caught_up=self._caught_up,
            last_batch_age_s=None if self._last_batch is None else self.clock() - self._last_batch,
            error=self.error,
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
        stored: dict[tuple[str, int], int] | None = None
        for topic, partition in list(self._assigned):
            tp = TopicPartition(topic, partition)
            try:
                _low, high = consumer.get_watermark_offsets(tp, timeout=1, cached=cached_only)
            except Exception:
                continue
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


def _feeder_main(settings: FeederSettings, conn: Any, stop: Any, parent_pid: int) -> None:
    """The consumer process: feed the store until told to stop or orphaned."""
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
                conn.send((_json.encode(feeder.status()), feeder.exposition()))

    try:
        feeder.run(lambda: stop.is_set() or os.getppid() != parent_pid, report)
        next_report = 0.0
        report()
    finally:
        store.close()
        conn.close()


# -- the item model --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    model: ItemModel
    index: ItemIndex | None


def load_served_model(folder: Path) -> ServedModel:
    """A model version, with an ANN index when its catalog is large."""
    model = load_item_model(folder)
    index = ItemIndex.for_model(model) if model.n_items >= ANN_MIN_ITEMS else None
    return ServedModel(model, index)


class ItemModels:
    """The newest item model under a folder, reloaded off the request path.

    A background thread asks the :class:`ModelWatcher` every ``poll_s``; requests read the
    last model loaded, so a new version never makes a request wait for its load."""

    def __init__(self, root: Path, poll_s: float, metrics: ServeMetrics) -> None:
        self._metrics = metrics
        self.watcher: ModelWatcher[ServedModel] = ModelWatcher(
            root,
            poll_s,
            load=load_served_model,
            on_load=self._loaded,
            on_error=lambda _folder, _exc: metrics.item_model_loads.labels("error").inc(),
        )
        self.poll_s = max(poll_s, 0.05)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.served: ServedModel | None = None

    def _loaded(self, folder: Path) -> None:
        self._metrics.item_model_loads.labels("ok").inc()
        self._metrics.item_model.clear()
        self._metrics.item_model.labels(folder.name).set(1)

    def refresh(self) -> ServedModel | None:
        self.served = self.watcher.current()
        return self.served

    def start(self) -> None:
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="serve-item-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def memory_for(model: ItemModel, fields: dict[str, Any]) -> UserItemMemory | None:
    """The user's item memory for ``model``: rebuilt from the recent items when the profile
    was built against another model version (attribute indices differ between versions)."""
    memory = memory_from_fields(fields)
    if memory is None or memory.model_version == model.version:
        return memory
    fresh = UserItemMemory(model.version)
    for item, event_type, ts_ms in memory.recent:
        fresh = update_memory(fresh, model, item, event_type, ts_ms)
    return fresh


class RecommendedItem(msgspec.Struct):
    item_id: str
    score: float


class Recommendations(msgspec.Struct):
    """A user's top items from the served item model, best first (the user's own recent
    items excluded). ``cold`` is true when the model knows none of the user's items (or the
    user has no profile): the items are then popular ones, within their categories if known."""

    user_id: str
    model_version: str
    profile_version: int | None
    cold: bool
    items: list[RecommendedItem]


def recommend_for(
    served: ServedModel, user_id: str, profile: StoredProfile | None, k: int
) -> Recommendations:
    model = served.model
    fields = profile.fields if profile is not None else {}
    memory = memory_for(model, fields) if profile is not None else None
    seen = {item for item, _, _ in memory.recent} if memory else set()
    ranked = recommend(
        model,
        memory,
        k,
        exclude=seen,
        index=served.index,
        category_affinity=fields.get("category_affinity"),
    )
    cold = memory is None or not any(item in model.index for item in seen)
    return Recommendations(
        user_id,
        model.version,
        None if profile is None else profile.version,
        cold,
        [RecommendedItem(item, score) for item, score in ranked],
    )


# -- HTTP ------------------------------------------------------------------------------------


class SegmentSize(msgspec.Struct):
    segment: str
    size: int


class Health(msgspec.Struct):
    """``status``: ``ok``; ``starting`` until the consumer has caught up once; ``down`` (HTTP
    503) when the store does not answer or the consumer has stopped."""

    status: Literal["ok", "starting", "down"]
    store: str
    users: int | None
    consumer: ConsumerStatus | None
    item_model: str | None
    error: str | None = None


class Problem(msgspec.Struct):
    detail: str


_json = msgspec.json.Encoder()


def _response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status, media_type="application/json")


def _problem(status: int, detail: str) -> Response:
    return _response(Problem(detail), status)


class _Timed:
    """Observe each request's latency under its route's template (pure ASGI: no overhead
    of Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.histogram.labels(label).observe(time.perf_counter() - started)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on", "")


def build_app(
    store: ProfileStore,
    metrics: ServeMetrics,
    feeder: Feeder | None = None,
    models: ItemModels | None = None,
) -> ASGIApp:
    """The HTTP API over ``store``; its lifespan starts and stops ``feeder`` and ``models``."""

    async def user(request: Request) -> Response:
        uid = request.path_params["user_id"]
        doc = await store.fetch_json(uid, interest=_flag(request.query_params.get("interest")))
        if doc is None:
            return _problem(404, f"no profile for user {uid!r}")
        return Response(doc, media_type="application/json")

    async def recommendations(request: Request) -> Response:
        uid = request.path_params["user_id"]
        try:
            k = int(request.query_params.get("k", "10"))
        except ValueError:
            return _problem(422, "k must be an integer")
        if not 1 <= k <= MAX_K:
            return _problem(422, f"k must be between 1 and {MAX_K}")
        served = models.served if models is not None else None
        if served is None:
            return _problem(503, "no item model is loaded (give --item-model-dir)")
        doc = await store.fetch_json(uid, interest=True)
        profile = None if doc is None else decode_profile(doc)
        result = await run_in_threadpool(recommend_for, served, uid, profile, k)
        return _response(result)

    async def segment_size(request: Request) -> Response:
        name = request.path_params["name"]
        return _response(SegmentSize(name, store.segment_size(name)))

    async def segments(request: Request) -> Response:
        sizes = store.segment_sizes()
        return _response([SegmentSize(name, size) for name, size in sizes.items()])

    async def healthz(request: Request) -> Response:
        health = health_of(store, feeder, models)
        return _response(health, 503 if health.status == "down" else 200)

    async def prometheus(request: Request) -> Response:
        text = generate_latest(metrics.registry)
        if feeder is not None:
            text += feeder.exposition()
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    spec = _json.encode(openapi())

    async def openapi_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if models is not None:
            models.start()
        if feeder is not None:
            feeder.start()
        yield
        if feeder is not None:
            feeder.stop()
        if models is not None:
            models.stop()
        await store.aclose()

    app = Starlette(
        routes=[
            Route("/users/{user_id}", user),
            Route("/users/{user_id}/recommendations", recommendations),
            Route("/segments", segments),
            Route("/segments/{name}/size", segment_size),
            Route("/healthz", healthz),
            Route("/metrics", prometheus),
            Route("/openapi.json", openapi_json),
        ],
        lifespan=lifespan,
    )
    return _Timed(app, metrics.request_seconds)


def health_of(store: ProfileStore, feeder: Feeder | None, models: ItemModels | None) -> Health:
    consumer = feeder.status() if feeder is not None else None
    try:
        users: int | None = store.size()
        error = None
    except Exception as exc:
        users, error = None, f"store: {type(exc).__name__}: {exc}"
    status: Literal["ok", "starting", "down"] = "ok"
    if error is not None or (consumer is not None and not consumer.running):
        status = "down"
        error = error or (consumer.error if consumer else None) or "the consumer is not running"
    elif consumer is not None and consumer.error is not None:
        status, error = "down", consumer.error
    elif consumer is not None and not consumer.caught_up:
        status = "starting"
    served = models.served if models is not None else None
    version = served.model.version if served is not None else None
    return Health(status, store.kind, users, consumer, version, error)


def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 description; schemas come from the response types themselves."""
    _, schemas = msgspec.json.schema_components(
        [StoredProfile, Recommendations, SegmentSize, Health, Problem],
        ref_template="#/components/schemas/{name}",
    )
    schemas["StoredProfile"]["description"] = (
        "A user's newest profile. `fields` holds the public profile fields of the deltas "
        "contract (counts, spend, affinities, keywords, windows, segments, rfm, item memory, "
        "...): see README, 'Profile delta'. `interest` (only with ?interest=true) is the "
        "interest vector as base64 of little-endian float16."
    )

    def body(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
        if isinstance(schema, str):
            schema = {"$ref": f"#/components/schemas/{schema}"}
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def param(name: str, where: str, schema: dict[str, Any], text: str = "") -> dict[str, Any]:
        return {"name": name, "in": where, "required": where == "path", "schema": schema} | (
            {"description": text} if text else {}
        )

    def get(op: str, summary: str, responses: dict[str, Any], *params: Any) -> dict[str, Any]:
        return {"get": {"operationId": op, "summary": summary, "parameters": list(params),
                        "responses": responses}}  # fmt: skip

    user = param("user_id", "path", {"type": "string"})
    problem = body("Problem", "error")
    interest = param("interest", "query", {"type": "boolean", "default": False}, "add the vector")
    k = param("k", "query", {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10})
    text = {"description": "text format 0.0.4", "content": {"text/plain": {"schema": {}}}}
    paths = {
        "/users/{user_id}": get(
            "getUser", "A user's newest profile",
            {"200": body("StoredProfile", "the profile"), "404": problem}, user, interest,
        ),
        "/users/{user_id}/recommendations": get(
            "getRecommendations", "Top items for a user from the served item model",
            {"200": body("Recommendations", "best first"), "422": problem, "503": problem},
            user, k,
        ),
        "/segments": get(
            "listSegments", "Every segment seen, and its size",
            {"200": body({"type": "array", "items": {"$ref": "#/components/schemas/SegmentSize"}},
                         "sizes")},
        ),
        "/segments/{name}/size": get(
            "getSegmentSize", "How many users are in a segment now (0 for an unknown name)",
            {"200": body("SegmentSize", "the size")}, param("name", "path", {"type": "string"}),
        ),
        "/healthz": get(
            "health", "Store, consumer lag and item model",
            {"200": body("Health", "serving"), "503": body("Health", "store or consumer down")},
        ),
        "/metrics": get("metrics", "Prometheus metrics", {"200": text}),
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "profilestream serve",
            "version": "1",
            "description": "Profiles, segment sizes and recommendations materialised from the "
            "profile deltas topic.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


# -- running it ------------------------------------------------------------------------------


def make_service(config: Config) -> tuple[ASGIApp, ProfileStore, FeederProcess | None]:
    """The app, its store and its consumer process (the app's lifespan starts and stops it)."""
    store = open_store(config.serve_store)
    metrics = ServeMetrics(store)
    feeder = None
    if config.serve_consume:
        assignment = config.serve_assignment
        if assignment == "auto":
            assignment = "all" if store.kind == "sqlite" else "group"
        settings = FeederSettings(
            config.serve_store,
            config.brokers,
            config.deltas_topic,
            config.segments_topic,
            assignment,
            config.serve_group_id,
            config.serve_batch_size,
            config.serve_batch_wait_ms / 1000,
            config.kafka_properties(),
        )
        feeder = FeederProcess(settings)
    models = None
    if config.item_model_dir is not None:
        models = ItemModels(config.item_model_dir, config.model_poll_s, metrics)
    return build_app(store, metrics, feeder, models), store, feeder


def serve(config: Config) -> None:
    """Run the service until SIGINT or SIGTERM (the consumer finishes its batch first)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app, store, _ = make_service(config)
    log.info(
        "serving %s on http://%s:%d", store.kind, config.serve_http_host, config.serve_http_port
    )
    try:
        uvicorn.run(
            app,
            host=config.serve_http_host,
            port=config.serve_http_port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            lifespan="on",
        )
    finally:
        store.close()


if __name__ == "__main__":  # python -m dataflow.serve: as `profilestream serve`
    from dataflow.commands import serve as serve_command

    parser = argparse.ArgumentParser(prog="python -m dataflow.serve")
    serve_command.add_arguments(parser)
    sys.exit(serve_command.run(parser.parse_args()))
