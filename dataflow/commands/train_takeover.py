"""``profilestream train-takeover``: fit the takeover score on labelled streams."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from dataflow.eval.risk import read_events, read_labels
from dataflow.eval.takeover import TAKEOVER_PRECISION, suspected_purchases, train_takeover
from operators.apps import load_risk_params
from operators.apps.risk_model import save_model


def add_command(subparsers: Any) -> None:
    """Register ``profilestream train-takeover``."""
    parser = subparsers.add_parser(
        "train-takeover",
        help="fit the score that decides a suspected takeover's purchases",
        description="Fold each events file through the risk rules, keep the purchases made "
        "from a suspected origin (a new device and IP, or a new IP on a known device) with "
        "their features, label them from the labels file (account_takeover or not), choose "
        "the threshold on each stream's scores from a forest fit on the others, and write "
        "the model the flow loads with --takeover-model-path. Two streams at least.",
    )
    parser.add_argument("--events", type=Path, action="append", required=True,
                        help="an events JSONL file (repeat, one per stream)")  # fmt: skip
    parser.add_argument("--labels", type=Path, action="append", required=True,
                        help="its labels JSONL (event_id, kind), in the same order")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument("--precision", type=float, default=TAKEOVER_PRECISION,
                        help="share of escalated suspicions that must be takeovers")  # fmt: skip
    parser.add_argument("--risk-rules-file", type=Path, default=None,
                        help="the rules the flow runs with (default: shipped)")  # fmt: skip
    parser.set_defaults(handler=_train_command)


def _train_command(args: argparse.Namespace) -> None:
    if len(args.events) != len(args.labels):
        raise SystemExit("give one --labels per --events")
    started = time.perf_counter()
    params = load_risk_params(args.risk_rules_file)
    streams = [
        suspected_purchases(read_events(events), read_labels(labels), params)
        for events, labels in zip(args.events, args.labels, strict=True)
    ]
    model, choice = train_takeover(streams, args.precision)
    save_model(model, args.out)
    print(
        f"wrote {args.out}: {model.version}, {model.examples} suspected purchases "
        f"({model.frauds} takeover), threshold {choice.threshold:.4f}: out of stream, "
        f"{choice.precision:.3f} of escalated suspicions right, {choice.recall:.3f} of "
        f"{choice.takeovers} takeovers found, {time.perf_counter() - started:.1f} s"
    )
