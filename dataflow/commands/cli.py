"""The ``profilestream`` command: run the dataflow, generate events, run the demo.

profilestream run --source kafka --sink kafka --brokers host:9092 --workers 2
profilestream generate --events 100000 --users 5000 --out events.jsonl
profilestream embed-items --catalog catalog.jsonl --out item-vectors/
profilestream demo
"""

from __future__ import annotations

import argparse
import os
import sys

from dataflow.config import add_config_arguments, load_config
from dataflow.runner import run_flow

# The model ships inside a package; make sure nothing ever tries the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _parser() -> argparse.ArgumentParser:
    from dataflow.commands import (
        demand_eval,
        demo,
        generator,
        items,
        recsys,
        risk_eval,
        segments_eval,
        sentiment,
        serve,
    )

    parser = argparse.ArgumentParser(
        prog="profilestream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the profile dataflow")
    add_config_arguments(run)
    run.set_defaults(handler=lambda args: run_flow(load_config(args)))
    generator.add_command(commands)
    demo.add_command(commands)
    items.add_command(commands)
    sentiment.add_command(commands)
    recsys.add_command(commands)
    segments_eval.add_command(commands)
    risk_eval.add_command(commands)
    demand_eval.add_command(commands)
    serve.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except ValueError as exc:
        print(f"profilestream {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
