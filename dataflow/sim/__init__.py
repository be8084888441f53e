"""A simulated shop: realistic synthetic behaviour events, and the catalog they refer to.

The demo, the benchmarks and the tests need a stream that stresses the dataflow the way
production does, without shipping anyone's real data:

* Users, items and queries are Zipf-distributed: a few users send a large share of the events,
  a few items get most views and popular queries repeat heavily (which is what makes the
  embedding cache pay off).
* Users act in sessions (login, searches, views and clicks in one category, cart, purchase,
  logout) interleaved in global time order; some review or refund earlier purchases, and a very
  few delete their account and may come back later.
* English and Chinese: users have a language, queries and reviews are written in it (English
  reviews come from the bundled CC0 sample, Chinese ones from templates), and a few timestamps
  are RFC 3339 strings, in UTC or in China's +08:00.
* A small share of bad messages, each labelled with the reason code
  :func:`operators.ingest.events.parse_event` gives it, plus exact re-sends that the profile step
  rejects as ``duplicate_event``.
* Optionally (``anomalies=AnomalyConfig()``, ``generate --anomalies``), labelled fraud and
  abuse for :mod:`operators.apps.risk` to find, on top of legitimate traffic made messier so that
  the detectors meet their false positives: see :class:`AnomalyConfig`.

Everything is drawn from one seeded :class:`numpy.random.Generator`, so a seed is a data set.

>>> from operators.ingest import parse_event
>>> events = list(generate_events(1_000, 50, seed=1, malformed_rate=0.02))
>>> len(events), sum(e.expected_reason is not None for e in events)
(1000, 20)
>>> bad = [e for e in events if e.expected_reason not in (None, "duplicate_event")]
>>> all(parse_event(e.line).reason == e.expected_reason for e in bad)
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import msgspec
import numpy as np

from dataflow.sim.anomalies import (
    ANOMALY_KINDS,
    EPISODE_SIZES,
    EPISODE_STYLES,
    AnomalyConfig,
    EpisodeStyle,
    Injector,
    episode_style,
    plan_anomalies,
)
from dataflow.sim.malformed import BAD_KINDS, malformed_line
from dataflow.sim.sessions import Writer, plan_sessions
from dataflow.sim.world import (
    CATEGORIES,
    DEFAULT_CATALOG_ITEMS,
    DEFAULT_END_MS,
    DEFAULT_SPAN_DAYS,
    DUPLICATE_LOOKBACK,
    CatalogItem,
    Draws,
    GeneratedEvent,
    World,
    build_catalog,
    cdf,
)
from dataflow.sim.writers import (
    GenerationSummary,
    chargebacks_for,
    read_catalog,
    write_catalog,
    write_events,
    write_labels,
)
from operators.ingest.units import DAY_MS

__all__ = [
    "ANOMALY_KINDS",
    "CATEGORIES",
    "DEFAULT_CATALOG_ITEMS",
    "DEFAULT_END_MS",
    "DEFAULT_SPAN_DAYS",
    "DUPLICATE_LOOKBACK",
    "EPISODE_SIZES",
    "EPISODE_STYLES",
    "AnomalyConfig",
    "CatalogItem",
    "EpisodeStyle",
    "GeneratedEvent",
    "GenerationSummary",
    "build_catalog",
    "chargebacks_for",
    "episode_style",
    "generate_events",
    "read_catalog",
    "write_catalog",
    "write_events",
    "write_labels",
]


def generate_events(
    n_events: int,
    n_users: int,
    *,
    seed: int = 0,
    malformed_rate: float = 0.01,
    catalog: Sequence[CatalogItem] | None = None,
    start_ms: int = DEFAULT_END_MS - DEFAULT_SPAN_DAYS * DAY_MS,
    span_days: float = DEFAULT_SPAN_DAYS,
    anomalies: AnomalyConfig | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[GeneratedEvent]:
    """Yield exactly ``n_events`` JSON lines in event-time order, ``malformed_rate`` of them bad.

    ``catalog=None`` uses ``build_catalog(DEFAULT_CATALOG_ITEMS, np.random.default_rng(seed))``,
    so passing that catalog explicitly gives the same events. A duplicate re-sends one of the
    last :data:`DUPLICATE_LOOKBACK` valid events, of a user who is never deleted.

    ``anomalies`` injects labelled episodes of fraud and abuse (see :class:`AnomalyConfig`);
    ``stats``, if given, receives ``episodes`` and ``short_history`` (episodes whose victim
    lacks the history its detector needs) once the stream is planned.

    >>> events = list(generate_events(20_000, 400, seed=1, anomalies=AnomalyConfig(0.05)))
    >>> len(events), len({(e.anomaly, e.user_id) for e in events if e.anomaly})  # 5% of users
    (20000, 20)
    """
    if n_events < 0 or n_users < 1:
        raise ValueError(f"need n_events >= 0 and n_users >= 1, got {n_events} and {n_users}")
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError(f"malformed_rate must be within [0, 1], got {malformed_rate}")
    if catalog is None:
        catalog = build_catalog(DEFAULT_CATALOG_ITEMS, np.random.default_rng(seed))
    if not catalog:
        raise ValueError("the catalog is empty")
    draws = Draws(np.random.default_rng([seed, 1]))
    n_bad = round(n_events * malformed_rate)
    n_valid = n_events - n_bad
    span_ms = round(span_days * DAY_MS)
    messy_span = None if anomalies is None else (start_ms, span_ms)
    world = World(catalog, n_users, seed, draws, messy_span)
    anomaly_draws = Draws(np.random.default_rng([seed, 2]), block=4096)
    plan = [] if anomalies is None else plan_anomalies(anomaly_draws, n_users, anomalies)
    n_injected = sum(size for _, size in plan)
    if n_injected > n_valid // 2:
        raise ValueError(
            f"{len(plan)} anomalous episodes need {n_injected} of the {n_valid} valid events: "
            "lower the anomaly rate or generate more events"
        )
    sessions = plan_sessions(world, n_valid - n_injected, start_ms, span_ms)
    deleted = {s.user for s in sessions if s.deletes}

    writer = Writer(world)
    timeline = [e for s in sessions for e in writer.session(s)]
    timeline.sort(key=lambda e: e[0])  # stable: a user's events keep their order
    labels: dict[str, str] = {}
    if plan:
        assert anomalies is not None
        injector = Injector(
            world, writer, timeline, deleted, start_ms, span_ms, anomaly_draws, anomalies.style
        )
        injected, labels = injector.inject(plan)
        timeline += injected
        timeline.sort(key=lambda e: e[0])
        if stats is not None:
            stats["short_history"] = injector.short_history
    if stats is not None:
        stats["episodes"] = len(plan)

    bad_at = set(draws.rng.choice(n_events, size=n_bad, replace=False).tolist()) if n_bad else set()
    bad_cdf = cdf(w for _, w in BAD_KINDS)
    # The last valid lines and their user (-1: a user who gets deleted, not to be duplicated).
    recent: deque[tuple[bytes, int]] = deque(maxlen=DUPLICATE_LOOKBACK)
    encoder = msgspec.json.Encoder()
    users = world.users
    valid = iter(timeline)
    pending = next(valid, None)
    last = pending
    for position in range(n_events):
        if position not in bad_at and pending is not None:
            _, user, event = pending
            line = encoder.encode(event)
            recent.append((line, user if user not in deleted else -1))
            yield GeneratedEvent(line, users[user].user_id, None, labels.get(event["event_id"]))
            last = pending
            pending = next(valid, None)
            continue
        yield malformed_line(draws, bad_cdf, pending or last, recent, writer, users)
