"""The ``profilestream`` command: run the dataflow, generate events, run the demo.

profilestream run --source kafka --sink kafka --brokers host:9092 --workers 2
profilestream generate --events 100000 --users 5000 --out events.jsonl
profilestream embed-items --catalog catalog.jsonl --out item-vectors/
profilestream demo
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# The model ships inside a package; make sure nothing ever tries the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


#: The subcommands, in the order ``--help`` lists them: one module each.
COMMANDS = (
    "run",
    "generate",
    "generate_handbook",
    "demo",
    "embed_items",
    "train_sentiment",
    "eval_sentiment",
    "train",
    "eval_recsys",
    "rfm_cuts",
    "segments_check",
    "eval_risk",
    "train_risk",
    "train_takeover",
    "eval_demand",
    "serve",
    "api_key",
    "cluster_init",
    "config_docs",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="profilestream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"dataflow.commands.{name}").add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = args.handler(args)
    except ValueError as exc:
        print(f"profilestream {args.command}: {exc}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
