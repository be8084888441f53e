"""Wire the operators into the profilestream Bytewax dataflow.

    input (Kafka | JSONL) -> parse (a batch at a time) -> key by user
        -> profile (stateful, per user: wait for text vectors, apply, coalesce) -> deltas sink
    parse rejects, duplicates and source errors -> dead-letter sink

All logic lives in ``operators/``; this module connects steps, sources, sinks and metrics,
and adapts the per-user logic to Bytewax's :class:`~bytewax.operators.StatefulBatchLogic`:
its timers, end of input and snapshots. ``build_flow`` takes optional source, sinks, encoder
and clock so tests run the real flow with ``bytewax.testing``. ``flow_from_env`` is the entry
point for ``python -m bytewax.run dataflow.flow:flow_from_env`` on a cluster.

Each user's state rests as MessagePack bytes between deltas (a few KB); it is decoded when
the user's first event of an emit interval arrives and encoded again when the delta goes
out, so a busy user pays for (de)serialisation once per delta, not once per event.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard, cast

import bytewax.operators as op
import numpy as np
from bytewax.connectors.files import FileSink
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from dataflow import metrics
from dataflow.config import Config, load_config
from dataflow.model_watch import ItemModelFeed, ModelWatcher
from dataflow.sinks import dead_letter_json, dead_letter_message
from dataflow.sources import JsonlSource, RawLine
from operators.batching import TextBatcher
from operators.coalesce import (
    PendingChanges,
    Published,
    decode_pending,
    emit,
    encode_pending,
    erase,
    note,
    published,
)
from operators.deltas import ProfileDelta, delta_to_json
from operators.embedding import Embedder, TextEncoder, embedding_text, typed_text
from operators.events import DeadLetter, Event, RejectReason, duplicate_of, parse_event
from operators.item_model import load_item_model
from operators.item_vectors import ItemVectors, loader_for
from operators.nlp import SentimentScorer, read_text
from operators.profile import (
    DAY_MS,
    Outcome,
    ProfileParams,
    UserState,
    apply_event,
    decode_state,
    encode_state,
)
from operators.windows import parse_windows

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def shared_embedder(config: Config) -> Embedder:
    """One model per process, shared by its worker threads, loaded when a text first needs it."""
    return _embedder(
        config.model_dir,
        config.embed_model,
        config.device,
        config.embed_precision,
        config.embed_threads or None,
        config.embed_cache_size,
        config.embed_batch_size,
    )


@lru_cache(maxsize=4)
def _embedder(
    model_dir: Path | None,
    model: str,
    device: str | None,
    precision: str,
    threads: int | None,
    cache_size: int,
    batch_size: int,
) -> Embedder:
    return Embedder(
        model_dir,
        model=model,
        device=device,
        precision=precision,
        threads=threads,
        cache_size=cache_size,
        batch_size=batch_size,
        lazy=True,  # events without text need no model: start on them meanwhile
    )


def profile_params(config: Config, model_name: str) -> ProfileParams:
    return ProfileParams(
        interest_half_life_ms=round(config.interest_half_life_days * DAY_MS),
        affinity_half_life_ms=round(config.affinity_half_life_days * DAY_MS),
        max_seen_event_ids=config.max_seen_event_ids,
        max_keywords=config.max_keywords,
        full_every=config.full_every,
        model_version=f"{model_name}+profile-v1",
        windows=parse_windows(config.windows),
        allowed_lateness_ms=config.allowed_lateness_ms,
    )


@dataclass(frozen=True)
class _Context:
    """What every user's logic shares: the model, the batcher, the settings and the clock."""

    params: ProfileParams
    batcher: TextBatcher
    sentiment: SentimentScorer
    feed: ItemModelFeed | None
    items: ModelWatcher[ItemVectors] | None
    prompts: Mapping[str, str]
    clock: Clock
    emit_interval_ms: int
    keywords_per_text: int
    dim: int

    def vector_of(self, event: Event) -> tuple[np.ndarray | None, str | None]:
        """The event's vector if the catalog has it, else the text whose vector it needs;
        ``(None, None)`` when its type does not move the interest vector."""
        if not self.params.moves_interest(event):
            return None, None
        if self.items is not None and typed_text(event) is None:
            vectors = self.items.current()
            vector = vectors.get(event.item_id) if vectors is not None else None
            if vector is not None:
                return vector, None
        return None, embedding_text(event, self.prompts)


Output = ProfileDelta | DeadLetter
#: A user's snapshot, immutable as Bytewax requires: the state as of the last delta, the
#: state now and the pending changes (when changes are pending, all MessagePack bytes), and
#: the events waiting for a text vector.
UserSnapshot = tuple[bytes | None, bytes | None, bytes | None, list[Event]]


class _UserLogic(StatefulBatchLogic[Event, Output, UserSnapshot]):
    """One user's events in order: wait for vectors, apply, and send a delta when due."""

    __slots__ = ("before", "context", "emitted", "pending", "registered", "state", "waiting")

    def __init__(self, context: _Context, resume: UserSnapshot | None) -> None:
        emitted, current, pending, waiting = resume or (None, None, None, [])
        self.context = context
        self.emitted = emitted  # the state as of the last delta, as bytes
        self.state: UserState | None = None if current is None else decode_state(current)
        self.pending = None if pending is None else decode_pending(pending)
        self.waiting: list[Event] | None = list(waiting) or None  # None saves a list a user
        self.before: Published | None = None  # what the last delta published, while pending
        self.registered = 0  # waiting events, from the first, whose texts joined a batch

    def on_batch(self, values: list[Event]) -> tuple[list[Output], bool]:
        if self.waiting is None:
            self.waiting = values  # a fresh list of Bytewax's: ours to keep
        else:
            self.waiting.extend(values)
        return self._advance(), self._finished()

    def on_notify(self) -> tuple[list[Output], bool]:
        now = self.context.clock()
        if self.waiting:
            self.context.batcher.flush_due(now)
        out = self._advance()
        if self.pending is not None and now >= self.pending.due_ms:
            out.append(self._emit(now))
        return out, self._finished()

    def on_eof(self) -> tuple[list[Output], bool]:
        out = self._advance()
        while self.waiting:  # the input is over: embed what waits now
            self.context.batcher.flush(self.context.clock())
            out += self._advance()
        if self.pending is not None:
            out.append(self._emit(self.context.clock()))
        return out, self._finished()

    def notify_at(self) -> datetime | None:
        due = None
        if self.waiting:
            due = self.context.batcher.due_ms() or self.context.clock()
        if self.pending is not None:
            due = self.pending.due_ms if due is None else min(due, self.pending.due_ms)
        return None if due is None else _as_datetime(due)

    def snapshot(self) -> UserSnapshot:
        if self.pending is None or self.state is None:
            return self.emitted, None, None, list(self.waiting or ())
        current, pending = encode_state(self.state), encode_pending(self.pending)
        return self.emitted, current, pending, list(self.waiting or ())

    def _finished(self) -> bool:
        """Discard the logic once the user is erased and nothing of theirs is left."""
        done = self.emitted is None and self.state is None and not self.waiting
        return StatefulBatchLogic.DISCARD if done else StatefulBatchLogic.RETAIN

    def _advance(self) -> list[Output]:
        """Apply waiting events in order until one needs a vector that is not ready yet.

        The texts of the events queued behind that one are registered once, so they join
        the same batch: a user's burst of searches waits for one batch, not one per search.
        """
        waiting = self.waiting
        out: list[Output] = []
        if not waiting:
            return out
        context = self.context
        now = context.clock()
        applied = 0
        for event in waiting:
            vector, text = context.vector_of(event)
            if text is not None:
                vector = context.batcher.vector(text, now)
                if vector is None:
                    break
            applied += 1
            output = self._apply(event, vector, now)
            if output is not None:
                out.append(output)
        del waiting[:applied]
        self.registered = max(self.registered - applied, 1)
        if len(waiting) > self.registered:
            for later in waiting[self.registered :]:
                if (text := context.vector_of(later)[1]) is not None:
                    context.batcher.vector(text, now)
            self.registered = len(waiting)
            head = context.vector_of(waiting[0])[1]
            if head is None or context.batcher.vector(head, now) is not None:
                out += self._advance()  # the batch closed while the queue joined it
        if not self.waiting:
            self.waiting = None
        if self.pending is None:
            self.state = None  # nothing unsent: the state rests as bytes
        return out

    def _apply(self, event: Event, vector: Any, now: int) -> Output | None:
        context = self.context
        state = self.state
        if state is None and self.emitted is not None:
            state = decode_state(self.emitted)
            if self.pending is None:
                self.before = published(state)
        feed = context.feed
        items = feed.model() if feed is not None else None
        if feed is not None and state is not None and context.params.moves_interest(event):
            feed.observe(state.profile.item_memory, event.item_id)
        signals = read_text(event, context.sentiment, context.keywords_per_text, vector)
        if signals is not None and signals.polarity is not None:
            metrics.OPINION_POLARITY.labels(event.type).observe(signals.polarity)
        dropped: set[tuple[str, str]] = set()
        new, outcome = apply_event(
            state,
            event,
            vector,
            context.params,
            dim=context.dim,
            signals=signals,
            items=items,
            dropped=dropped,
        )
        if outcome is Outcome.DUPLICATE:
            self.state = state if self.pending is not None else None
            return duplicate_of(event)
        if outcome is Outcome.DELETED:
            tombstone = erase(state, self.pending, event, context.params, now)
            self.emitted = self.state = self.pending = self.before = None
            return tombstone
        if outcome is Outcome.LATE:
            metrics.LATE_EVENTS.inc()
        self.state = new
        if self.pending is None:
            self.pending = PendingChanges(due_ms=now + context.emit_interval_ms)
        note(self.pending, event, in_windows=outcome is Outcome.APPLIED)
        self.pending.dropped |= dropped
        return self._emit(now) if context.emit_interval_ms == 0 else None

    def _emit(self, now: int) -> ProfileDelta:
        assert self.state is not None and self.pending is not None
        params = self.context.params
        before = self.before
        if before is None and self.emitted is not None:  # resumed from a snapshot
            before = published(decode_state(self.emitted))
        delta = emit(self.state, before, self.pending, params, now)
        self.emitted = encode_state(self.state)
        self.state = self.pending = self.before = None
        return delta


@lru_cache(maxsize=4096)
def _as_datetime(ms: int) -> datetime:
    """Due times repeat for every user of an input batch: build each datetime once."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _origin(message: KafkaSourceMessage) -> str:
    return f"{message.topic}/{message.partition}/{message.offset}"


def _parse_kafka(messages: list[KafkaSourceMessage], clock: Clock) -> list[Event | DeadLetter]:
    now = clock()
    parsed = []
    for message in messages:
        kind, stamp = message.timestamp or (0, 0)
        parsed.append(
            parse_event(
                message.value or b"",
                key=message.key,
                source=_origin(message),
                ingest_ms=stamp if kind and stamp > 0 else now,
            )
        )
    return _counted(parsed)


def _parse_lines(lines: list[RawLine], clock: Clock) -> list[Event | DeadLetter]:
    now = clock()
    return _counted([parse_event(line, source=origin, ingest_ms=now) for line, origin in lines])


def _counted(parsed: list[Event | DeadLetter]) -> list[Event | DeadLetter]:
    """Count valid events by type once per batch (a labelled counter per event is costly)."""
    for event_type, n in Counter(e.type for e in parsed if isinstance(e, Event)).items():
        metrics.EVENTS_IN.labels(event_type).inc(n)
    return parsed


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


def _is_delta(item: Output) -> TypeGuard[ProfileDelta]:
    return isinstance(item, ProfileDelta)


def _delta_json(delta: ProfileDelta, clock: Clock) -> bytes:
    """Encode a delta for its sink and count it (kind, size, events, latency)."""
    data = delta_to_json(delta)
    metrics.DELTAS_OUT.labels(delta.kind).inc()
    metrics.DELTA_BYTES.observe(len(data))
    metrics.EVENTS_PER_DELTA.observe(len(delta.event_ids))
    if delta.ingest_ms:
        metrics.EVENT_TO_DELTA_SECONDS.observe(max(clock() - delta.ingest_ms, 0) / 1000)
    return data


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
        parsed = op.flat_map_batch("parse", kafka.oks, lambda ms: _parse_kafka(ms, clock))
        return parsed, [op.map("source_errors", kafka.errs, _source_error)]
    if source is None:
        if config.input_path is None:
            raise ValueError("source=file needs input_path")
        source = JsonlSource(config.input_path)
    lines = op.input("file_in", flow, source)
    return op.flat_map_batch("parse", lines, lambda batch: _parse_lines(batch, clock)), []


def _outputs(
    config: Config,
    deltas: Stream[ProfileDelta],
    dead: Stream[DeadLetter],
    clock: Clock,
    deltas_sink: Sink[Any] | None,
    dlq_sink: Sink[Any] | None,
) -> None:
    if deltas_sink is None and dlq_sink is None and config.sink == "kafka":
        topic = config.deltas_topic
        out = op.merge(
            "to_kafka",
            op.map(
                "delta_msg",
                deltas,
                lambda d: KafkaSinkMessage(d.user_id.encode(), _delta_json(d, clock), topic=topic),
            ),
            op.map("dlq_msg", dead, lambda d: dead_letter_message(d, config.dlq_topic)),
        )
        # topic=None: each message names its own topic (deltas or dead letters).
        kop.output(
            "kafka_out",
            out,
            brokers=config.brokers.split(","),
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
    as_lines = op.map("delta_json", deltas, lambda d: (d.user_id, _delta_json(d, clock).decode()))
    op.output("deltas_out", as_lines, deltas_sink)
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
    head = getattr(sentiment, "embedding", None)
    if head is not None and not head.reads(model.name):
        raise ValueError(
            f"the sentiment model's embedding head reads {head.model} vectors, but the flow "
            f"embeds with {model.name}: train it again with the flow's model"
        )
    context = _Context(
        params=profile_params(config, model.name),
        batcher=TextBatcher(
            model, config.embed_batch_size, config.embed_max_wait_ms, metrics.observe_batch
        ),
        sentiment=sentiment,
        feed=item_model_feed(config),
        items=item_vectors(config, model),
        prompts=model.prompts,
        clock=clock,
        emit_interval_ms=config.emit_interval_ms,
        keywords_per_text=config.keywords_per_text,
        dim=model.dim,
    )
    flow = Dataflow("profilestream")
    parsed, source_errors = _inputs(flow, config, source, clock)
    valid = op.branch("valid", parsed, _is_event)
    rejected = cast(Stream[DeadLetter], valid.falses)
    by_user = op.key_on("by_user", valid.trues, lambda e: e.user_id)
    results = op.stateful_batch("profile", by_user, lambda resume: _UserLogic(context, resume))
    split = op.branch("is_delta", op.key_rm("drop_key", results), _is_delta)
    duplicates = cast(Stream[DeadLetter], split.falses)
    dead = op.merge("dead_letters", rejected, duplicates, *source_errors)
    dead = op.inspect("count_dead", dead, lambda _s, d: metrics.DEAD_LETTERS.labels(d.reason).inc())
    _outputs(config, split.trues, dead, clock, deltas_sink, dlq_sink)
    return flow


def item_model_feed(config: Config) -> ItemModelFeed | None:
    """The hot-reloaded item model of ``config.item_model_dir`` (``None`` when unset)."""
    if config.item_model_dir is None:
        return None
    watcher = ModelWatcher(
        config.item_model_dir,
        config.model_poll_s,
        load=load_item_model,
        on_load=metrics.ITEM_MODEL_VERSIONS.loaded,
        on_error=metrics.ITEM_MODEL_VERSIONS.failed,
    )
    return ItemModelFeed(watcher, on_weights=metrics.type_weights_changed)


def item_vectors(config: Config, model: TextEncoder) -> ModelWatcher[ItemVectors] | None:
    """The hot-reloaded catalog vectors of ``config.item_vectors_dir`` (``None`` when unset)."""
    if config.item_vectors_dir is None:
        return None
    return ModelWatcher(
        config.item_vectors_dir,
        config.model_poll_s,
        load=loader_for(model),
        on_load=metrics.ITEM_VECTOR_VERSIONS.loaded,
        on_error=metrics.ITEM_VECTOR_VERSIONS.failed,
    )


def flow_from_env() -> Dataflow:
    """The dataflow configured by ``PROFILESTREAM_*`` variables (for ``python -m bytewax.run``).

    ``bytewax.run`` itself takes the recovery directory, snapshot interval and worker count
    (``-r``, ``-s``, ``-w`` or ``BYTEWAX_*`` variables).
    """
    return build_flow(load_config())
