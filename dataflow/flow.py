"""Wire the operators into the profilestream Bytewax dataflow.

    input (Kafka | JSONL) -> parse -> shard -> embed (micro-batched) -> key by user
        -> profile (stateful, per user) -> deltas sink
    parse rejects, duplicates and source errors -> dead-letter sink

All logic lives in ``operators/``; this module only connects steps, sources, sinks and
metrics. ``build_flow`` takes optional source, sinks, encoder and clock so tests run the
real flow with ``bytewax.testing``. ``flow_from_env`` is the entry point for
``python -m bytewax.run dataflow.flow:flow_from_env`` on a cluster.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.connectors.files import FileSink
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink

from dataflow import metrics
from dataflow.config import Config, load_config
from dataflow.model_watch import ItemModelFeed, ModelWatcher
from dataflow.sinks import dead_letter_json, dead_letter_message
from dataflow.sources import JsonlSource
from operators.batching import EmbeddedEvent, MicroBatcher
from operators.deltas import ProfileDelta, delta_to_json
from operators.embedding import Embedder, TextEncoder, embedding_text
from operators.events import DeadLetter, Event, RejectReason, parse_event
from operators.item_model import load_item_model
from operators.nlp import SentimentScorer, read_text
from operators.profile import DAY_MS, ProfileParams, apply_event

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def shared_embedder(config: Config) -> Embedder:
    """One model per process, shared by its worker threads and batcher shards."""
    return _embedder(
        config.model_dir,
        config.device,
        config.embed_precision,
        config.embed_threads or None,
        config.embed_cache_size,
        config.embed_batch_size,
    )


@lru_cache(maxsize=4)
def _embedder(
    model_dir: Path | None,
    device: str | None,
    precision: str,
    threads: int | None,
    cache_size: int,
    batch_size: int,
) -> Embedder:
    return Embedder(
        model_dir,
        device=device,
        precision=precision,
        threads=threads,
        cache_size=cache_size,
        batch_size=batch_size,
    )


def profile_params(config: Config, model_name: str) -> ProfileParams:
    return ProfileParams(
        interest_half_life_ms=round(config.interest_half_life_days * DAY_MS),
        affinity_half_life_ms=round(config.affinity_half_life_days * DAY_MS),
        max_seen_event_ids=config.max_seen_event_ids,
        max_keywords=config.max_keywords,
        full_every=config.full_every,
        model_version=f"{model_name}+profile-v1",
    )


BatcherSnapshot = tuple[list[Event], int | None]


class _BatcherLogic(StatefulLogic[Event, EmbeddedEvent, BatcherSnapshot]):
    """Adapts :class:`MicroBatcher` to Bytewax: timers, EOF and snapshots."""

    def __init__(self, batcher: MicroBatcher, clock: Clock) -> None:
        self.batcher = batcher
        self.clock = clock

    # A shard lives as long as the flow (there are only a few), so it is always retained.

    def on_item(self, value: Event) -> tuple[list[EmbeddedEvent], bool]:
        return self.batcher.add(value, self.clock()), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[EmbeddedEvent], bool]:
        return self.batcher.flush(self.clock()), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[EmbeddedEvent], bool]:
        return self.batcher.flush(self.clock()), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self.batcher.due_ms()
        return None if due is None else datetime.fromtimestamp(due / 1000, tz=UTC)

    def snapshot(self) -> BatcherSnapshot:
        return self.batcher.pending(), self.batcher.opened_ms


def _origin(message: KafkaSourceMessage) -> str:
    return f"{message.topic}/{message.partition}/{message.offset}"


def _parse_kafka(message: KafkaSourceMessage, clock: Clock) -> Event | DeadLetter:
    kind, stamp = message.timestamp or (0, 0)
    return parse_event(
        message.value or b"",
        key=message.key,
        source=_origin(message),
        ingest_ms=stamp if kind and stamp > 0 else clock(),
    )


def _source_error(error: Any) -> DeadLetter:
    message = error.msg
    return DeadLetter(
        RejectReason.SOURCE_ERROR.value,
        str(error.err),
        message.value or b"",
        message.key,
        _origin(message),
    )


def _is_event(item: Event | DeadLetter) -> TypeGuard[Event]:
    return isinstance(item, Event)


def _is_delta(item: ProfileDelta | DeadLetter) -> TypeGuard[ProfileDelta]:
    return isinstance(item, ProfileDelta)


def _count_delta(delta: ProfileDelta, now_ms: int) -> None:
    metrics.DELTAS_OUT.labels(delta.kind).inc()
    if delta.ingest_ms:
        metrics.EVENT_TO_DELTA_SECONDS.observe(max(now_ms - delta.ingest_ms, 0) / 1000)


def _inputs(
    flow: Dataflow, config: Config, source: Source | None, clock: Clock
) -> tuple[Stream[Event | DeadLetter], list[Stream[DeadLetter]]]:
    if source is None and config.source == "kafka":
        kafka = kop.input(
            "kafka_in",
            flow,
            brokers=config.brokers.split(","),
            topics=[config.events_topic],
            tail=config.kafka_tail,
            add_config=config.kafka_properties(),
        )
        parsed = op.map("parse", kafka.oks, lambda m: _parse_kafka(m, clock))
        return parsed, [op.map("source_errors", kafka.errs, _source_error)]
    if source is None:
        if config.input_path is None:
            raise ValueError("source=file needs input_path")
        source = JsonlSource(config.input_path)
    lines = op.input("file_in", flow, source)
    parsed = op.map(
        "parse", lines, lambda line: parse_event(line[0], source=line[1], ingest_ms=clock())
    )
    return parsed, []


def _outputs(
    config: Config,
    deltas: Stream[ProfileDelta],
    dead: Stream[DeadLetter],
    deltas_sink: Sink[Any] | None,
    dlq_sink: Sink[Any] | None,
) -> None:
    if deltas_sink is None and dlq_sink is None and config.sink == "kafka":
        brokers = config.brokers.split(",")
        out = op.merge(
            "to_kafka",
            op.map(
                "delta_msg",
                deltas,
                lambda d: KafkaSinkMessage(
                    d.user_id.encode(), delta_to_json(d), topic=config.deltas_topic
                ),
            ),
            op.map("dlq_msg", dead, lambda d: dead_letter_message(d, config.dlq_topic)),
        )
        # topic=None: each message names its own topic (deltas or dead letters).
        kop.output(
            "kafka_out",
            out,
            brokers=brokers,
            topic=None,  # type: ignore[arg-type]
            # Idempotent producer: retries can neither duplicate nor reorder a partition, so
            # consumers see each user's versions in order.
            add_config={"enable.idempotence": "true", **config.kafka_properties()},
        )
        return
    if deltas_sink is None or dlq_sink is None:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        for name in ("deltas.jsonl", "dead_letters.jsonl"):
            (config.output_dir / name).touch()
    deltas_sink = deltas_sink or FileSink(config.output_dir / "deltas.jsonl")
    dlq_sink = dlq_sink or FileSink(config.output_dir / "dead_letters.jsonl")
    op.output(
        "deltas_out",
        op.map("delta_json", deltas, lambda d: (d.user_id, delta_to_json(d).decode())),
        deltas_sink,
    )
    op.output("dlq_out", op.map("dlq_json", dead, lambda d: ("dlq", dead_letter_json(d))), dlq_sink)


def build_flow(
    config: Config,
    *,
    encoder: TextEncoder | None = None,
    sentiment: SentimentScorer | None = None,
    source: Source | None = None,
    deltas_sink: Sink[Any] | None = None,
    dlq_sink: Sink[Any] | None = None,
    clock: Clock = wall_clock_ms,
) -> Dataflow:
    """Build the dataflow for ``config``; the keyword arguments replace its parts in tests.

    With ``source``, items are ``(raw JSON line, origin)`` pairs, as :class:`JsonlSource`
    gives them; the origin is what makes a profile's incarnation unique. Sinks receive
    ``(user_id, delta JSON)`` and ``("dlq", dead-letter JSON)`` pairs.
    """
    model = encoder or shared_embedder(config)
    if sentiment is None:
        from operators.sentiment import load_sentiment_model

        sentiment = load_sentiment_model(config.sentiment_model)
    params = profile_params(config, model.name)
    shards = config.batcher_shards
    flow = Dataflow("profilestream")

    parsed, source_errors = _inputs(flow, config, source, clock)
    valid = op.branch("valid", parsed, _is_event)
    rejected = cast(Stream[DeadLetter], valid.falses)
    events = op.inspect(
        "count_events", valid.trues, lambda _s, e: metrics.EVENTS_IN.labels(e.type).inc()
    )

    by_shard = op.key_on("shard", events, lambda e: str(zlib.crc32(e.user_id.encode()) % shards))

    def batcher(resume: BatcherSnapshot | None) -> _BatcherLogic:
        pending, opened_ms = resume or ([], None)
        micro = MicroBatcher(
            model,
            config.embed_batch_size,
            config.embed_max_wait_ms,
            pending=pending,
            opened_ms=opened_ms,
            on_batch=metrics.observe_batch,
            text_of=lambda event: embedding_text(event) if params.moves_interest(event) else None,
        )
        return _BatcherLogic(micro, clock)

    embedded = op.stateful("embed", by_shard, batcher)
    by_user = op.key_on(
        "by_user", op.map("unshard", embedded, lambda kv: kv[1]), lambda e: e.event.user_id
    )

    feed = item_model_feed(config)

    def update(state: Any, item: EmbeddedEvent) -> tuple[Any, list[ProfileDelta | DeadLetter]]:
        event = item.event
        signals = read_text(event, sentiment, config.keywords_per_text)
        if signals is not None and signals.polarity is not None:
            metrics.OPINION_POLARITY.labels(event.type).observe(signals.polarity)
        items = feed.model() if feed is not None else None
        if feed is not None and state is not None and params.moves_interest(event):
            feed.observe(state.profile.item_memory, event.item_id)
        return apply_event(
            state, event, item.vector, params, clock(), model.dim, signals=signals, items=items
        )

    results = op.map("drop_key", op.stateful_flat_map("profile", by_user, update), lambda kv: kv[1])
    split = op.branch("is_delta", results, _is_delta)
    deltas = op.inspect("count_deltas", split.trues, lambda _s, d: _count_delta(d, clock()))
    duplicates = cast(Stream[DeadLetter], split.falses)
    dead = op.merge("dead_letters", rejected, duplicates, *source_errors)
    dead = op.inspect("count_dead", dead, lambda _s, d: metrics.DEAD_LETTERS.labels(d.reason).inc())
    _outputs(config, deltas, dead, deltas_sink, dlq_sink)
    return flow


def item_model_feed(config: Config) -> ItemModelFeed | None:
    """The hot-reloaded item model of ``config.item_model_dir`` (``None`` when unset)."""
    if config.item_model_dir is None:
        return None
    watcher = ModelWatcher(
        config.item_model_dir,
        config.model_poll_s,
        load=load_item_model,
        on_load=metrics.model_loaded,
        on_error=metrics.model_failed,
    )
    return ItemModelFeed(watcher, on_weights=metrics.type_weights_changed)


def check_recovery_shards(recovery_dir: Path, shards: int) -> None:
    """Refuse to resume a recovery store written with another batcher shard count.

    Pending events are snapshotted under their shard's key; with another count a user's new
    events would go to another shard and could overtake the restored ones. The count is
    recorded beside Bytewax's partitions on first use.
    """
    marker = recovery_dir / "profilestream-batcher-shards"
    if not marker.exists():
        marker.write_text(f"{shards}\n")
        return
    recorded = int(marker.read_text())
    if recorded != shards:
        raise ValueError(
            f"{recovery_dir} was written with {recorded} batcher shards, not {shards}: "
            f"pass --embed-shards {recorded} (or drain the flow and start a new recovery dir)"
        )


def flow_from_env() -> Dataflow:
    """The dataflow configured by ``PROFILESTREAM_*`` variables (for ``python -m bytewax.run``).

    ``bytewax.run`` itself takes the recovery directory, snapshot interval and worker count
    (``-r``, ``-s``, ``-w`` or ``BYTEWAX_*`` variables); the shard count is checked against a
    recovery directory named by ``BYTEWAX_RECOVERY_DIRECTORY``.
    """
    config = load_config()
    recovery_dir = os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
    if recovery_dir:
        check_recovery_shards(Path(recovery_dir), config.batcher_shards)
    return build_flow(config)
