"""``profilestream demo``: generate events, run the real dataflow on them, print a summary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dataflow.config import add_config_arguments
from dataflow.demo import DEFAULT_OUT, demo_config, format_report, run_demo
from dataflow.sim import DEFAULT_CATALOG_ITEMS


def add_command(subparsers: Any) -> None:
    """Register ``profilestream demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="generate events, run the dataflow on them, print a summary",
        description="Generate synthetic events, run the real dataflow on them with file "
        "source and sinks, and print throughput, deltas, dead letters and sample profiles. "
        "Every option of `profilestream run` applies too.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="events to generate")
    parser.add_argument("--users", type=int, default=5_000, help="user population")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data")
    parser.add_argument("--malformed-rate", type=float, default=0.01, help="share of bad lines")
    parser.add_argument("--catalog-items", type=int, default=DEFAULT_CATALOG_ITEMS)
    parser.add_argument(
        "--out",
        dest="output_dir",
        type=Path,
        default=None,
        help=f"folder for the events, catalog, deltas and dead letters (default {DEFAULT_OUT})",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=_demo_command)


def _demo_command(args: argparse.Namespace) -> None:
    if args.catalog_items < 1:
        raise ValueError("--catalog-items must be at least 1")
    report = run_demo(
        demo_config(args),
        args.events,
        args.users,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        catalog_items=args.catalog_items,
    )
    print(format_report(report))
