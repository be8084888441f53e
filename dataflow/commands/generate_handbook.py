"""``profilestream generate-handbook``: the Fraud Detection Handbook's transactions as events."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from dataflow.sim.handbook import HandbookParams, handbook_events, handbook_labels, simulate


def add_command(subparsers: Any) -> None:
    """Register ``profilestream generate-handbook``."""
    defaults = HandbookParams()
    parser = subparsers.add_parser(
        "generate-handbook",
        help="write the Fraud Detection Handbook's simulated transactions as purchase events",
        description="Simulate card transactions as the Fraud Detection Handbook (Le Borgne et "
        "al., chapter 3.2) describes them, with its three fraud scenarios, and write them as "
        "purchase events (customers as users, terminals as items, amounts as prices) plus "
        "the fraud verdicts as labels that arrive --delay-days after each fraud.",
    )
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--terminals", type=int, default=defaults.terminals)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--delay-days", type=float, default=7.0,
                        help="how long after a fraud its verdict arrives")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="events JSONL file")
    parser.add_argument("--labels", type=Path, required=True, help="fraud verdicts JSONL file")
    parser.set_defaults(handler=_generate_command)


def _generate_command(args: argparse.Namespace) -> None:
    if min(args.customers, args.terminals, args.days) < 1:
        raise ValueError("--customers, --terminals and --days must be at least 1")
    started = time.perf_counter()
    params = HandbookParams(
        customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed
    )
    sim = simulate(params)
    for path, lines in (
        (args.out, handbook_events(sim)),
        (args.labels, handbook_labels(sim, args.delay_days)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.writelines(line + b"\n" for line in lines)
    by_scenario = np.bincount(sim.scenario, minlength=4)
    print(
        f"wrote {len(sim.ts_ms)} transactions to {args.out} and {int(sim.fraud.sum())} fraud "
        f"verdicts to {args.labels} in {time.perf_counter() - started:.1f} s "
        f"(scenarios 1/2/3: {by_scenario[1]}/{by_scenario[2]}/{by_scenario[3]})"
    )
