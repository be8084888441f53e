"""``profilestream eval-demand``: demand forecasts against seasonal naive, rolling origin."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from dataflow.eval.demand import (
    GENERATED_CATEGORIES,
    GENERATED_DAYS,
    GENERATED_EVENTS,
    cdnow_series,
    format_table,
    generated_series,
    run_eval,
)


def add_command(subparsers: Any) -> None:
    """Register ``profilestream eval-demand``."""
    parser = subparsers.add_parser(
        "eval-demand",
        help="score the category demand forecasts against seasonal naive (MASE)",
        description="Rolling-origin MASE of the demand forecaster on CDNOW (daily, weekly) "
        "and on the synthetic stream (hourly), against seasonal naive.",
    )
    parser.add_argument("--events", type=int, default=GENERATED_EVENTS,
                        help="synthetic events to generate")  # fmt: skip
    parser.add_argument("--categories", type=int, default=GENERATED_CATEGORIES,
                        help="biggest synthetic categories to score")  # fmt: skip
    parser.add_argument("--days", type=int, default=GENERATED_DAYS,
                        help="event-time span of the synthetic stream")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic stream")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.set_defaults(handler=_eval_command)


def _eval_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    print("building series ...")
    series = cdnow_series() + generated_series(
        args.events, args.categories, seed=args.seed, days=args.days
    )
    result = run_eval(series)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result))
