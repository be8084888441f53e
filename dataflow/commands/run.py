"""``profilestream run``: run the profile dataflow in this process.

    profilestream run --source kafka --sink kafka --brokers kafka:9092 --workers 2
    profilestream run --input-path events.jsonl --output-dir out/

Every option is a field of :class:`~dataflow.config.Config` (flags and ``PROFILESTREAM_*``
variables; see docs/configuration.md). As a cluster, run
``python -m bytewax.run dataflow.flow:flow_from_env`` instead (deploy/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from prometheus_client import Counter

from dataflow import metrics
from dataflow.config import add_config_arguments, load_config
from dataflow.runner import run_flow


def add_command(subparsers: Any) -> None:
    """Register ``profilestream run``."""
    parser = subparsers.add_parser(
        "run",
        help="run the profile dataflow",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the flow; at the end (or on Ctrl-C) print what it did, from its own counters."""
    config = load_config(args)
    started = time.monotonic()
    try:
        run_flow(config)
        ending = "done"
    except KeyboardInterrupt:
        ending = "interrupted" + (
            "; a restart resumes from the last snapshot" if config.recovery_dir else ""
        )
    print(summary(time.monotonic() - started, ending), file=sys.stderr)
    return 130 if ending.startswith("interrupted") else 0


def summary(seconds: float, ending: str) -> str:
    """One screen: events in, deltas and dead letters out, by kind and reason."""
    events = _totals(metrics.EVENTS_IN)
    deltas = _totals(metrics.DELTAS_OUT)
    dead = _totals(metrics.DEAD_LETTERS)
    total = sum(events.values())
    lines = [
        f"profilestream run {ending} after {seconds:,.1f} s",
        f"  events    {total:>12,.0f}  ({total / max(seconds, 1e-9):,.0f}/s)",
        f"  deltas    {sum(deltas.values()):>12,.0f}  "
        + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(deltas.items())),
        f"  dead      {sum(dead.values()):>12,.0f}  "
        + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(dead.items())),
    ]
    return "\n".join(lines)


def _totals(counter: Counter) -> dict[str, float]:
    """A labelled counter's totals by its one label."""
    out: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                label = next(iter(sample.labels.values()), "")
                out[label] = out.get(label, 0.0) + sample.value
    return out
