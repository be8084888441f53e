"""Prometheus metrics of the dataflow, in prometheus-client's default registry.

``profilestream run`` serves the registry at ``http://HOST:PORT/metrics`` (``--metrics-host``,
loopback by default, and ``--metrics-port``, 3030); under ``bytewax.run``, and with
``--metrics-host 0.0.0.0``, Bytewax's API server renders it next to its own metrics. Counters
are per process; sum them across processes in Grafana.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from dataflow.memory import memory_limit_bytes
from operators.text.embedding import BatchReport

disable_created_metrics()  # the *_created series double the scrape size and nobody graphs them

EVENTS_IN = Counter("profilestream_events", "Valid events that entered the flow, by type", ["type"])
DEAD_LETTERS = Counter(
    "profilestream_dead_letters", "Messages sent to the dead-letter sink, by reason", ["reason"]
)
DELTAS_OUT = Counter("profilestream_deltas", "Profile deltas emitted, by kind", ["kind"])
EMBED_BATCH_SIZE = Histogram(
    "profilestream_embed_batch_size",
    "Distinct texts embedded per model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
EMBED_BATCH_SECONDS = Histogram(
    "profilestream_embed_batch_seconds",
    "Model time per embedding batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EMBED_BATCH_WAIT_SECONDS = Histogram(
    "profilestream_embed_batch_wait_seconds",
    "How long the oldest text of a batch waited before the batch closed",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
EVENT_TO_DELTA_SECONDS = Histogram(
    "profilestream_event_to_delta_seconds",
    "From the earliest event of a delta entering the system (Kafka timestamp or file read) "
    "to the delta",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.25, 1.5, 2, 2.5, 5, 10, 30),
)
DELTA_BYTES = Histogram(
    "profilestream_delta_bytes",
    "Size of each profile delta's JSON value",
    buckets=(256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
)
EVENTS_PER_DELTA = Histogram(
    "profilestream_events_per_delta",
    "Events a delta covers (coalescing within the emit interval)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
USERS_HELD = Gauge(
    "profilestream_users_held", "Users whose state this process holds (profile step)"
)
STATE_BYTES = Gauge(
    "profilestream_state_bytes",
    "Bytes of the users' stored state (as of their last delta) this process holds",
)
EXPIRED_USERS = Counter(
    "profilestream_expired_users",
    "Users erased after being inactive for --expire-after-days (a tombstone each)",
)
LATE_EVENTS = Counter(
    "profilestream_late_events",
    "Events older than their user's newest by more than the allowed lateness: applied to the "
    "long-term profile, left out of the windows",
)


def observe_batch(report: BatchReport) -> None:
    EMBED_BATCH_SIZE.observe(report.size)
    EMBED_BATCH_SECONDS.observe(report.embed_seconds)
    EMBED_BATCH_WAIT_SECONDS.observe(report.wait_ms / 1000)


OPINION_POLARITY = Histogram(
    "profilestream_opinion_polarity",
    "Sentiment of review and complaint texts, from -1 (negative) to 1 (positive), by type",
    ["type"],
    buckets=(-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
)
ITEM_MODEL_LOADS = Counter(
    "profilestream_item_model_loads",
    "Item model versions loaded by the running flow, by result (ok, error)",
    ["result"],
)
ITEM_MODEL_INFO = Gauge(
    "profilestream_item_model_info", "1 for the item model version being served", ["version"]
)
EVENT_TYPE_WEIGHT = Gauge(
    "profilestream_event_type_weight",
    "Weight of each event type in the item model, as learned online",
    ["type"],
)


ITEM_VECTORS_LOADS = Counter(
    "profilestream_item_vectors_loads",
    "Catalog item vector versions loaded by the running flow, by result (ok, error)",
    ["result"],
)
ITEM_VECTORS_INFO = Gauge(
    "profilestream_item_vectors_info",
    "1 for the catalog item vector version being served",
    ["version"],
)


@dataclass(frozen=True)
class VersionMetrics:
    """The callbacks of a :class:`~dataflow.model_watch.ModelWatcher`: count each load by
    result and show the version being served."""

    loads: Counter
    info: Gauge

    def loaded(self, folder: Path) -> None:
        self.loads.labels("ok").inc()
        self.info.clear()
        self.info.labels(folder.name).set(1)

    def failed(self, _folder: Path, _exc: Exception) -> None:
        self.loads.labels("error").inc()


ITEM_MODEL_VERSIONS = VersionMetrics(ITEM_MODEL_LOADS, ITEM_MODEL_INFO)
ITEM_VECTOR_VERSIONS = VersionMetrics(ITEM_VECTORS_LOADS, ITEM_VECTORS_INFO)


def type_weights_changed(weights: dict[str, float]) -> None:
    for event_type, weight in weights.items():
        EVENT_TYPE_WEIGHT.labels(event_type).set(weight)


SEGMENT_TRANSITIONS = Counter(
    "profilestream_segment_transitions",
    "Users entering and leaving marketing segments, by segment and direction (enter, exit)",
    ["segment", "direction"],
)
SEGMENT_MEMBERS = Gauge(
    "profilestream_segment_members",
    "Users in each segment, held by this process (also after a restart from recovery)",
    ["segment"],
)
SEGMENT_DEFINITIONS_LOADS = Counter(
    "profilestream_segment_definitions_loads",
    "Segment definition files loaded by the running flow, by result (ok, error)",
    ["result"],
)
RISK_MODEL_LOADS = Counter(
    "profilestream_risk_model_loads",
    "Learned risk model files loaded by the running flow, by result (ok, error)",
    ["result"],
)
# Both results exist from the start, at 0: a panel or rate() needs the series before the
# first reload, which may never come.
for _loads in (ITEM_MODEL_LOADS, ITEM_VECTORS_LOADS, SEGMENT_DEFINITIONS_LOADS, RISK_MODEL_LOADS):
    for _result in ("ok", "error"):
        _loads.labels(_result)
SEGMENT_DEFINITIONS_INFO = Gauge(
    "profilestream_segment_definitions_info",
    "1 for the segment definitions version in use",
    ["version"],
)
ALERTS = Counter("profilestream_alerts", "Risk alerts raised, by kind", ["kind"])
RISK_SCORES = Counter(
    "profilestream_risk_scores", "Purchases given a learned risk score (or logged without a model)"
)
RISK_MODEL_INFO = Gauge(
    "profilestream_risk_model_info", "1 for the learned risk model version in use", ["version"]
)
DEMAND_ACTUAL = Gauge(
    "profilestream_category_demand",
    "A category's demand in its last closed bucket, by measure (views, carts, purchases, "
    "units, revenue)",
    ["category", "measure"],
)
DEMAND_FORECAST = Gauge(
    "profilestream_category_demand_forecast_units",
    "Units a category is forecast to sell, in the next bucket and summed over the horizon",
    ["category", "horizon"],
)
DEMAND_ABS_ERROR = Counter(
    "profilestream_demand_forecast_abs_error_units",
    "Absolute error of one-bucket-ahead unit forecasts, summed (divide by the count: MAE)",
    ["category"],
)
DEMAND_FORECASTS_SCORED = Counter(
    "profilestream_demand_forecasts_scored",
    "One-bucket-ahead unit forecasts compared with the actual, by category",
    ["category"],
)
DEMAND_LATE_EVENTS = Counter(
    "profilestream_late_demand_events",
    "Events behind the watermark for category demand, by fate: in a corrected record of "
    "their bucket (correction) or older than the buckets kept for corrections (too_old)",
    ["fate"],
)
for _fate in ("correction", "too_old"):  # both series exist from the start, at zero
    DEMAND_LATE_EVENTS.labels(_fate)
DEMAND_CORRECTIONS = Counter(
    "profilestream_demand_corrections",
    "Demand records sent again with late events added (revision >= 1)",
)
WATERMARK = Gauge(
    "profilestream_watermark_seconds",
    "Event time a worker of a keyed step acts on (the slowest input channel's newest event "
    "time less the allowed lateness), seconds since the epoch",
    ["step", "worker"],
)
PARTITION_EVENT_TIME = Gauge(
    "profilestream_input_event_time_seconds",
    "Newest event time read from each input partition, seconds since the epoch",
    ["partition"],
)
PARTITION_IDLE = Gauge(
    "profilestream_input_partition_idle",
    "1 while an input partition is idle (read to its end and quiet for --idle-partition-ms: it "
    "holds no watermark back), 2 once its input has ended, 0 while it is active",
    ["partition"],
)

INPUT_LAG_SECONDS = Gauge(
    "profilestream_input_lag_seconds",
    "How long the last message read from each input partition waited in Kafka (now less its "
    "Kafka timestamp); 0 once the partition is read to its end",
    ["topic", "partition"],
)

INPUT_HELD_SECONDS = Counter(
    "profilestream_input_held_seconds",
    "Seconds each input partition stopped reading because --max-users-waiting users of its "
    "process waited for text vectors (a slow or loading model)",
    ["partition"],
)

SINK_QUEUE_MESSAGES = Gauge(
    "profilestream_sink_queue_messages",
    "Output messages in the Kafka producer's queue when a batch has been handed to it (before "
    "the flush that waits for the broker), per worker",
    ["worker"],
)
SINK_QUEUE_FULL_SECONDS = Counter(
    "profilestream_sink_queue_full_seconds",
    "Seconds the Kafka sink waited because the producer's queue was full (a slow broker)",
)
SINK_FLUSH_SECONDS = Histogram(
    "profilestream_sink_flush_seconds",
    "Time for the broker to acknowledge one batch of output messages",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SINK_DELIVERY_FAILURES = Counter(
    "profilestream_sink_delivery_failures",
    "Output messages Kafka refused for good (the flow then stops and resumes from its snapshot)",
)


MEMORY_LIMIT = Gauge(
    "profilestream_memory_limit_bytes",
    "The memory this process may use: its cgroup's limit (a container's), else the machine's",
)


if (_limit := memory_limit_bytes()) is not None:
    MEMORY_LIMIT.set(_limit)


class UserMetrics:
    """The user machines' observer (:class:`operators.user.UserObserver`): Prometheus.

    Labelled children are looked up once (``labels()`` costs as much as a small step).
    """

    def __init__(self) -> None:
        self._members: dict[str, Gauge] = {}
        self._transitions: dict[tuple[str, str], Counter] = {}
        self._alerts: dict[str, Counter] = {}
        self._opinions: dict[str, Histogram] = {}

    def resumed(self, segments: tuple[str, ...]) -> None:
        for segment in segments:
            self._member_gauge(segment).inc()

    def transition(self, segment: str, direction: str) -> None:
        counter = self._transitions.get((segment, direction))
        if counter is None:
            counter = SEGMENT_TRANSITIONS.labels(segment, direction)
            self._transitions[segment, direction] = counter
        counter.inc()
        self._member_gauge(segment).inc(1 if direction == "enter" else -1)

    def alert(self, kind: str) -> None:
        counter = self._alerts.get(kind)
        if counter is None:
            counter = self._alerts[kind] = ALERTS.labels(kind)
        counter.inc()

    def late_event(self) -> None:
        LATE_EVENTS.inc()

    def opinion(self, event_type: str, polarity: float) -> None:
        histogram = self._opinions.get(event_type)
        if histogram is None:
            histogram = self._opinions[event_type] = OPINION_POLARITY.labels(event_type)
        histogram.observe(polarity)

    def expired(self) -> None:
        EXPIRED_USERS.inc()

    def held(self, users: int, state_bytes: int) -> None:
        if users:
            USERS_HELD.inc(users)
        if state_bytes:
            STATE_BYTES.inc(state_bytes)

    def _member_gauge(self, segment: str) -> Gauge:
        gauge = self._members.get(segment)
        if gauge is None:
            gauge = self._members[segment] = SEGMENT_MEMBERS.labels(segment)
        return gauge
