"""``profilestream generate``: write synthetic behaviour events (JSON lines)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from dataflow.sim import (
    DEFAULT_CATALOG_ITEMS,
    DEFAULT_END_MS,
    DEFAULT_SPAN_DAYS,
    AnomalyConfig,
    GeneratedEvent,
    GenerationSummary,
    build_catalog,
    chargebacks_for,
    episode_style,
    generate_events,
    write_catalog,
    write_events,
    write_labels,
)
from operators.apps import KINDS as ANOMALY_KINDS
from operators.ingest.units import DAY_MS


def add_command(subparsers: Any) -> None:
    """Register ``profilestream generate``."""
    parser = subparsers.add_parser(
        "generate",
        help="write synthetic behaviour events (JSON lines)",
        description="Write realistic synthetic behaviour events as JSON lines, deterministic "
        "for a seed, including a share of bad messages for the dead-letter path.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="lines to write")
    parser.add_argument("--users", type=int, default=5_000, help="size of the user population")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--malformed-rate", type=float, default=0.01, help="share of bad lines")
    parser.add_argument("--span-days", type=float, default=DEFAULT_SPAN_DAYS,
                        help="event-time span, ending 2024-06-01T00:00:00Z")  # fmt: skip
    parser.add_argument("--catalog-items", type=int, default=DEFAULT_CATALOG_ITEMS)
    parser.add_argument("--out", type=Path, required=True, help="events JSONL file")
    parser.add_argument("--catalog", type=Path, default=None, help="also write the catalog here")
    parser.add_argument("--anomalies", action="store_true",
                        help="inject labelled fraud and abuse episodes (and messier legitimate "
                        "traffic); needs --labels and ~40 events per user")  # fmt: skip
    parser.add_argument("--anomaly-rate", type=float, default=AnomalyConfig.rate,
                        help="share of users given one anomalous episode")  # fmt: skip
    parser.add_argument("--anomaly-kinds", default=",".join(ANOMALY_KINDS),
                        help="comma-separated kinds to inject, in turn")  # fmt: skip
    parser.add_argument("--anomaly-style", default="tuned",
                        help="how episodes behave: 'tuned' (what the rules were first tuned "
                        "on), 'shifted' (other amounts, browsing first, known devices, slower "
                        "card testing and bots; the rules since risk-v3 were tuned on it too) "
                        "or 'drawn:<seed>' (every number drawn from wide ranges: held-out "
                        "streams)")  # fmt: skip
    parser.add_argument("--labels", type=Path, default=None,
                        help="write the anomalous events' ids and kinds (JSONL)")  # fmt: skip
    parser.add_argument("--chargebacks", type=Path, default=None,
                        help="also write chargeback events for the purchases of takeovers, "
                        "amount anomalies and card tests, days later (a --labels-path feed "
                        "for the learned risk score); needs --anomalies")  # fmt: skip
    parser.set_defaults(handler=_generate_command)


def _generate_command(args: argparse.Namespace) -> None:
    if args.catalog_items < 1:
        raise ValueError("--catalog-items must be at least 1")
    if args.anomalies != (args.labels is not None):
        raise ValueError("--anomalies and --labels go together")
    if args.chargebacks is not None and not args.anomalies:
        raise ValueError("--chargebacks needs --anomalies")
    anomalies = None
    if args.anomalies:
        kinds = tuple(k.strip() for k in args.anomaly_kinds.split(",") if k.strip())
        anomalies = AnomalyConfig(args.anomaly_rate, kinds, episode_style(args.anomaly_style))
    started = time.perf_counter()
    catalog = build_catalog(args.catalog_items, np.random.default_rng(args.seed))
    if args.catalog is not None:
        args.catalog.parent.mkdir(parents=True, exist_ok=True)
        write_catalog(args.catalog, catalog)
    summary = GenerationSummary()
    events = generate_events(
        args.events,
        args.users,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        catalog=catalog,
        start_ms=DEFAULT_END_MS - round(args.span_days * DAY_MS),
        span_days=args.span_days,
        anomalies=anomalies,
        stats=summary.stats,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    anomalous: list[GeneratedEvent] = []

    def tally(event: GeneratedEvent) -> GeneratedEvent:
        if event.anomaly is not None:
            anomalous.append(event)
        return summary.add(event)

    count = write_events(args.out, (tally(e) for e in events))
    seconds = time.perf_counter() - started
    print(f"wrote {count} events to {args.out} in {seconds:.1f} s (seed {args.seed})")
    if args.labels is not None:
        args.labels.parent.mkdir(parents=True, exist_ok=True)
        print(f"wrote {write_labels(args.labels, anomalous)} anomaly labels to {args.labels}")
    if args.chargebacks is not None:
        lines = chargebacks_for(anomalous, DEFAULT_END_MS, args.seed)
        args.chargebacks.parent.mkdir(parents=True, exist_ok=True)
        args.chargebacks.write_bytes(b"".join(line + b"\n" for line in lines))
        print(f"wrote {len(lines)} chargebacks to {args.chargebacks}")
    if args.catalog is not None:
        print(f"wrote {len(catalog)} catalog items to {args.catalog}")
    print("\n".join(summary.lines_out()))
