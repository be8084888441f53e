"""``profilestream eval-recsys``: next-item recommendations scored on a public benchmark."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dataflow.eval.datasets import Benchmark, load_amazon, load_taobao
from dataflow.eval.prequential import run_prequential, write_plot
from dataflow.eval.recsys import RecsysReport, evaluate


def _print_report(report: RecsysReport, as_json: bool) -> None:
    print(f"\n{report.dataset}: {report.users:,} users, {report.items:,} items")
    print(
        f"  train {report.train_s:.1f} s | replay {report.events:,} events through the dataflow "
        f"in {report.replay_s:.1f} s ({report.events_per_s:,.0f} events/s) | "
        f"rank {report.rank_s:.1f} s"
    )
    print("  " + "  ".join(f"{k}={v:.4f}" for k, v in report.metrics.items()))
    if as_json:
        print(json.dumps(report.as_json()))


def _load(args: argparse.Namespace) -> Benchmark:
    if args.taobao is not None:
        return load_taobao(args.taobao)
    if args.sequences is None:
        raise ValueError("give --sequences (Amazon format) or --taobao")
    return load_amazon(args.sequences, args.attributes)


def _eval_command(args: argparse.Namespace) -> None:
    bench = _load(args)
    if not args.prequential:
        _print_report(evaluate(bench, args.workers), args.json)
        return
    report = run_prequential(bench, cutoff=args.cutoff)
    plot = args.plot or Path(f"prequential-{report.dataset}.png")
    write_plot(report, plot)
    print(f"\n{report.summary()}\n  plot: {plot}")
    if args.json:
        print(json.dumps(report.as_json()))


def add_command(commands: Any) -> None:
    """Register ``profilestream eval-recsys``."""
    evaluator = commands.add_parser(
        "eval-recsys", help="score next-item recommendations on a public benchmark"
    )
    evaluator.add_argument("--sequences", type=Path, help="Amazon <Cat>.txt (user item item ...)")
    evaluator.add_argument("--attributes", type=Path, help="Amazon <Cat>_item2attributes.json")
    evaluator.add_argument("--taobao", type=Path, help="Taobao UserBehavior CSV instead")
    evaluator.add_argument("--workers", type=int, default=1, help="dataflow worker threads")
    evaluator.add_argument("--json", action="store_true", help="end with one JSON line")
    evaluator.add_argument(
        "--prequential",
        action="store_true",
        help="instead of leave-one-out, predict each event after --cutoff before applying it",
    )
    evaluator.add_argument(
        "--cutoff",
        type=float,
        default=0.5,
        help="with --prequential: the fraction of the stream the model trains on (default 0.5)",
    )
    evaluator.add_argument(
        "--plot",
        type=Path,
        help="with --prequential: the PNG to write (default prequential-<dataset>.png)",
    )
    evaluator.set_defaults(handler=_eval_command)
