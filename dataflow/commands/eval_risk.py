"""``profilestream eval-risk``: risk alerts scored against a stream's anomaly labels."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from dataflow.eval.risk import (
    DEFAULT_EPISODE_GAP_MS,
    flow_alerts,
    read_events,
    read_labels,
    replay_alerts,
    score_alerts,
)
from operators.apps import load_risk_params
from operators.ingest.units import HOUR_MS


def add_command(subparsers: Any) -> None:
    """Register ``profilestream eval-risk``."""
    parser = subparsers.add_parser(
        "eval-risk",
        help="score risk alerts against a generated stream's anomaly labels",
        description="Run the events through the risk detectors and report, per kind of "
        "anomaly, episode recall, alert precision and false alerts per 1,000 legitimate "
        "users per day.",
    )
    parser.add_argument("--events", type=Path, required=True, help="events JSONL file")
    parser.add_argument("--labels", type=Path, required=True, help="labels JSONL file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--replay",
        action="store_true",
        help="fold the file through assess in-process instead of the dataflow",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=None,
        help="JSON of risk thresholds overriding the defaults",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where the dataflow writes its outputs (default: a temporary folder)",
    )
    parser.add_argument(
        "--alerts-out",
        type=Path,
        default=None,
        help="also write the alerts here, one JSON object per line",
    )
    parser.add_argument(
        "--episode-gap-hours",
        type=float,
        default=DEFAULT_EPISODE_GAP_MS / HOUR_MS,
        help="labelled events further apart start a new episode",
    )
    parser.set_defaults(handler=_eval_command)


def _eval_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.replay:
        params = load_risk_params(args.rules)
        alerts = replay_alerts(args.events, params)
        extra = {"source": "replay", "model_version": params.model_version}
    else:
        if args.out_dir is not None:
            alerts = flow_alerts(args.events, args.out_dir, rules=args.rules)
        else:
            with tempfile.TemporaryDirectory(prefix="eval-risk-") as out_dir:
                alerts = flow_alerts(args.events, out_dir, rules=args.rules)
        extra = {"source": "flow"}
    extra["alerting_seconds"] = round(time.perf_counter() - started, 2)
    if args.alerts_out is not None:
        args.alerts_out.parent.mkdir(parents=True, exist_ok=True)
        encoder = msgspec.json.Encoder()
        args.alerts_out.write_bytes(b"".join(encoder.encode(a) + b"\n" for a in alerts))
    report = score_alerts(
        alerts,
        read_labels(args.labels),
        read_events(args.events),
        episode_gap_ms=round(args.episode_gap_hours * HOUR_MS),
    )
    report.extra = extra
    if args.json:
        print(msgspec.json.encode(report.as_json()).decode())
    else:
        print("\n".join(report.lines()))
