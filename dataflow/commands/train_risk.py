"""``profilestream train-risk``: fit the learned purchase score on the flow's feature log and
the fraud verdicts that arrived since."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from operators.apps.learned_risk import RiskScore
from operators.apps.risk_model import (
    RiskModelParams,
    fit_from_feedback,
    save_model,
    with_alert_budget,
)
from operators.ingest import Event, parse_event
from operators.ingest.units import DAY_MS


def add_command(subparsers: Any) -> None:
    """Register ``profilestream train-risk``."""
    defaults = RiskModelParams()
    parser = subparsers.add_parser(
        "train-risk",
        help="fit the learned purchase risk score on the flow's risk_scores and chargebacks",
        description="Join the flow's risk_scores output (each priced purchase's features, as "
        "scored) with the chargeback events received so far: a purchase with a chargeback is "
        "fraud, one without after --settle-days is genuine. Fit a random forest on the last "
        "--train-days of them, set the alert threshold that gives --alerts-per-day on the "
        "last week's purchases, and write the model the flow loads with --risk-model-path.",
    )
    parser.add_argument("--scores", type=Path, required=True, help="risk_scores JSONL")
    parser.add_argument("--labels", type=Path, required=True, help="chargeback events JSONL")
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument("--now-ms", type=int, default=None,
                        help="train as of this event time (default: after the newest "
                        "purchase); later purchases and verdicts are left out")  # fmt: skip
    parser.add_argument("--train-days", type=int, default=defaults.train_days)
    parser.add_argument("--settle-days", type=float, default=defaults.settle_days)
    parser.add_argument("--alerts-per-day", type=float, default=100.0,
                        help="the alert budget the threshold is set for")  # fmt: skip
    parser.add_argument("--trees", type=int, default=defaults.trees)
    parser.add_argument("--max-depth", type=int, default=defaults.max_depth)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.set_defaults(handler=_train_command)


def read_scores(path: Path) -> list[RiskScore]:
    decoder = msgspec.json.Decoder(RiskScore)
    with path.open("rb") as f:
        return [decoder.decode(line) for line in f if line.strip()]


def read_verdicts(path: Path) -> tuple[list[tuple[str, int]], int]:
    """(purchase event id, time received) of each chargeback; and how many lines were not one."""
    verdicts: list[tuple[str, int]] = []
    skipped = 0
    with path.open("rb") as f:
        for line in f:
            event = parse_event(line.rstrip(b"\r\n")) if line.strip() else None
            if isinstance(event, Event) and event.type == "chargeback" and event.ref_event_id:
                verdicts.append((event.ref_event_id, event.ts_ms))
            elif line.strip():
                skipped += 1
    return verdicts, skipped


def _train_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    params = RiskModelParams(
        trees=args.trees,
        max_depth=args.max_depth,
        train_days=args.train_days,
        settle_days=args.settle_days,
        seed=args.seed,
    )
    scores = read_scores(args.scores)
    if not scores:
        raise ValueError(f"{args.scores} holds no risk scores")
    verdicts, skipped = read_verdicts(args.labels)
    now = args.now_ms if args.now_ms is not None else max(s.event_time_ms for s in scores) + 1
    model = fit_from_feedback(
        ((s.event_id, s.event_time_ms, s.features) for s in scores), verdicts, now, params
    )
    week = [s.features for s in scores if now - 7 * DAY_MS <= s.event_time_ms < now]
    if week:
        days = min(7.0, (now - min(s.event_time_ms for s in scores)) / DAY_MS)
        model = with_alert_budget(model, np.array(week), days, args.alerts_per_day)
    save_model(model, args.out)
    print(
        f"wrote {args.out}: {model.version}, {model.examples} examples ({model.frauds} fraud), "
        f"alert threshold {model.threshold:.4f} for {args.alerts_per_day:g} alerts a day, "
        f"{len(verdicts)} verdicts read ({skipped} other lines), "
        f"{time.perf_counter() - started:.1f} s"
    )
