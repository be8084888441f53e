"""Prometheus metrics of the service: requests by route and status, the store, the consumer."""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from dataflow.memory import memory_limit_bytes
from dataflow.serve.store import (
    BatchResult,
    ProfileStore,
)

log = logging.getLogger(__name__)
disable_created_metrics()


# -- metrics ---------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 1)
DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30, 60)


class ServeMetrics:
    """The HTTP side's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, store: ProfileStore) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU, open files
        limit = Gauge(
            "profilestream_memory_limit_bytes",
            "The memory this process may use: its cgroup's limit (a container's), else the "
            "machine's",
            registry=r,
        )
        if (bytes_ := memory_limit_bytes()) is not None:
            limit.set(bytes_)
        self.request_seconds = Histogram(
            "profilestream_serve_request_seconds",
            "HTTP request latency, by route and status code",
            ["route", "status"],
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
        for result in ("ok", "error"):  # at 0 from the start: graphs need the series
            self.item_model_loads.labels(result)


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
