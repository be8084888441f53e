"""Wire the operators into the profilestream Bytewax dataflow.

    input (Kafka | JSONL): parse, stamp each event with its partition's watermark,
        and send a marker of the partition's event time behind every batch (no reading
        while too many users wait for text vectors: backpressure)
        -> key by user (markers: one copy to every worker)
        -> profile (stateful, per user: wait for text vectors, apply, coalesce) -> deltas sink
                                         segment entries and exits   -> segments sink
                                         risk alerts                 -> alerts sink
           accepted events with a category, and each worker's watermark
        -> key by category (watermarks: to every worker)
        -> demand (stateful, per category: hourly buckets, online forecast) -> demand sink
           priced purchases (with the buyer's risk features) and chargebacks, and watermarks
        -> key by item (watermarks: to every worker)
        -> item risk (stateful, per item: sales and verdicts in event-time order, the
           learned score)                                  -> risk_scores sink, alerts sink
    parse rejects, duplicates and source errors -> dead-letter sink

All logic lives in ``operators/``; this module connects steps, sources, sinks and metrics,
and adapts the per-user logic to Bytewax's :class:`~bytewax.operators.StatefulBatchLogic`:
its timers, end of input and snapshots. ``build_flow`` takes optional source, sinks, encoder
and clock so tests run the real flow with ``bytewax.testing``. ``flow_from_env`` is the entry
point for ``python -m bytewax.run dataflow.flow:flow_from_env`` on a cluster.

Time passing matters to segments (a user lapses 30 days after their last purchase), to
expiry and to demand (an hour closes). Both keyed steps act on watermarks that travel in
the stream with the events, are kept in Bytewax's snapshots and never follow the wall
clock (:mod:`dataflow.clock`), so the same input gives the same records in every run,
after any failure.

Each user's state rests as MessagePack bytes between deltas (a few KB); it is decoded when
the user's first event of an emit interval arrives and encoded again when the delta goes
out, so a busy user pays for (de)serialisation once per delta, not once per event.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from dataflow import metrics
from dataflow.category_logic import CategoryLogic
from dataflow.clock import (
    Clock,
    Cluster,
    ClusterSource,
    StepTime,
    keyed_logic,
    route,
    wall_clock_ms,
)
from dataflow.config import Config, load_config
from dataflow.factories import (
    demand_params,
    risk_model,
    user_context,
)
from dataflow.inputs import read_inputs, route_users
from dataflow.item_risk_logic import ItemRiskLogic
from dataflow.outputs import Outputs, route_outputs
from dataflow.sources import Held
from dataflow.user_logic import Output, UserLogic
from operators.apps import (
    Alert,
    DemandReport,
)
from operators.apps.learned_risk import ItemVerdict, PurchaseCheck, RiskScore
from operators.apps.segments import SegmentTransition
from operators.ingest import (
    DeadLetter,
    Event,
    EventTimeSpeed,
)
from operators.profile import (
    ProfileDelta,
)
from operators.text import SentimentScorer
from operators.text.embedding import TextEncoder

log = logging.getLogger(__name__)
T = TypeVar("T")


def demand_stream(
    config: Config, accepted: Stream[Output], cluster: Cluster, step: StepTime
) -> Stream[DemandReport]:
    """The second keyed stream: demand per category, with its forecast."""
    params = demand_params(config)

    def category_of(item: Output) -> str | None:
        return item.category if type(item) is Event else None

    keyed = op.flat_map_batch("by_category", accepted, lambda xs: route(xs, cluster, category_of))
    reports = op.stateful_batch(
        "demand",
        keyed,
        lambda resume: keyed_logic(
            step, resume, lambda r: CategoryLogic(params, step, r), forward=False
        ),
    )
    return cast(Stream[DemandReport], op.key_rm("demand_reports", reports))  # clocks send none


def risk_stream(
    config: Config, results: Stream[Output], cluster: Cluster, step: StepTime
) -> Stream[RiskScore | Alert]:
    """The third keyed stream: each item's sales and chargebacks, and each purchase's score."""
    model_now = risk_model(config)
    settle_days = config.risk_settle_days

    def item_of(item: Output) -> str | None:
        kind = type(item)
        return (
            cast(PurchaseCheck, item).item_id
            if kind is PurchaseCheck or kind is ItemVerdict
            else None
        )

    keyed = op.flat_map_batch("by_item", results, lambda xs: route(xs, cluster, item_of))
    scored = op.stateful_batch(
        "item_risk",
        keyed,
        lambda resume: keyed_logic(
            step, resume, lambda r: ItemRiskLogic(model_now, settle_days, step, r), forward=False
        ),
    )
    return cast(Stream[RiskScore | Alert], op.key_rm("risk_outputs", scored))


#: Where classes that release 1 pickled into its snapshots (a user's waiting events, a
#: category's demand) live now: Bytewax unpickles them by their old names on resuming.
_RELEASE_1_MODULES: Final = {
    "operators.events": "operators.ingest.events",
    "operators.demand": "operators.apps.demand",
}


def _resume_release_1_snapshots() -> None:
    """Let a recovery store written by release 1 resume (tests/flow/test_previous_release.py)."""
    for old, new in _RELEASE_1_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def build_flow(
    config: Config,
    *,
    encoder: TextEncoder | None = None,
    sentiment: SentimentScorer | None = None,
    source: Source | None = None,
    sinks: Mapping[str, Sink[Any]] | None = None,
    clock: Clock = wall_clock_ms,
    timers: Callable[[], EventTimeSpeed] = EventTimeSpeed,
) -> Dataflow:
    """Build the dataflow for ``config``; the keyword arguments replace its parts in tests.

    ``source`` is any Bytewax source of ``(raw JSON line, origin)`` pairs, as
    :class:`~dataflow.sources.JsonlSource` gives them, one input partition per source
    partition; the origin is what makes a profile's incarnation unique. ``sinks`` maps output
    names (the keys of :data:`~dataflow.outputs.OUTPUT_FILES`) to sinks, which receive
    ``(key, JSON)`` pairs; outputs left out of ``sinks`` are not written. ``clock`` is the
    wall clock; ``timers`` makes each worker's estimate of how fast event time runs, which
    sets how soon timers look again (never what they see).
    """
    _resume_release_1_snapshots()
    cluster = Cluster()
    partitions: list[str] = []  # the input partitions, as the source lists them
    profile_time = cluster.step(
        "profile", lambda: partitions, clock, timers, config.allowed_lateness_ms,
        confirm_idle_ms=config.idle_partition_ms // 2,
    )  # fmt: skip
    demand_time = cluster.step(
        "demand", cluster.worker_channels, clock, timers, config.allowed_lateness_ms
    )
    risk_time = cluster.step(
        "item_risk", cluster.worker_channels, clock, timers, config.allowed_lateness_ms
    )
    context = user_context(config, encoder, sentiment, clock, profile_time)

    flow = Dataflow("profilestream")
    op.input("cluster", flow, ClusterSource(cluster))  # first: each worker learns its place
    items = read_inputs(
        flow,
        config,
        source,
        clock,
        on_partitions=_replace_with(partitions),
        held=_too_many_waiting(profile_time, config.max_users_waiting),
    )
    invalid = op.flat_map_batch("invalid", items, _only(DeadLetter))
    by_user = op.flat_map_batch("by_user", items, lambda b: route_users(b, cluster))
    results: Stream[Output] = op.key_rm(
        "drop_key",
        op.stateful_batch(
            "profile",
            by_user,
            lambda resume: keyed_logic(
                profile_time, resume, lambda r: UserLogic(context, r), forward=True
            ),
        ),
    )
    duplicates = op.flat_map_batch("duplicates", results, _only(DeadLetter))
    item_risk = risk_stream(config, results, cluster, risk_time)
    dead = op.merge("dead_letters", invalid, duplicates)
    outputs = Outputs(
        deltas=op.flat_map_batch("deltas", results, _only(ProfileDelta)),
        dead=op.inspect(
            "count_dead", dead, lambda _s, d: metrics.DEAD_LETTERS.labels(d.reason).inc()
        ),
        segments=op.flat_map_batch("transitions", results, _only(SegmentTransition)),
        alerts=op.merge(
            "all_alerts",
            op.flat_map_batch("alerts", results, _only(Alert)),
            op.flat_map_batch("learned_alerts", item_risk, _only(Alert)),
        ),
        demand=demand_stream(config, results, cluster, demand_time),
        risk_scores=op.flat_map_batch("risk_scores", item_risk, _only(RiskScore)),
    )
    route_outputs(config, outputs, clock, sinks or {})
    return flow


def _replace_with(names: list[str]) -> Callable[[list[str]], None]:
    """Set ``names`` to whatever the source lists (each worker lists the same ones)."""

    def replace(listed: list[str]) -> None:
        names[:] = listed

    return replace


def _too_many_waiting(time: StepTime, most: int) -> Held | None:
    """Hold the input while ``most`` users of this process wait for text vectors (0: never).

    Per process: each holds its own partitions, so a cluster's bound is per process too,
    as long as partitions spread evenly over the processes.
    """
    return None if most == 0 else lambda: time.users_waiting() >= most


def _only(kind: type[T]) -> Callable[[list[Any]], list[T]]:
    """Pick one kind of output out of a mixed stream, a batch at a time (a comprehension per
    batch costs a fraction of a function call per item)."""
    return lambda batch: [item for item in batch if type(item) is kind]


def flow_from_env() -> Dataflow:
    """The dataflow configured by ``PROFILESTREAM_*`` variables (for ``python -m bytewax.run``).

    ``bytewax.run`` itself takes the recovery directory, snapshot interval and worker count
    (``-r``, ``-s``, ``-w`` or ``BYTEWAX_*`` variables).
    """
    return build_flow(load_config())
