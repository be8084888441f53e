"""``profilestream train``: train the item model from an event log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dataflow.eval.training import histories_from_events, train


def add_command(commands: Any) -> None:
    """Register ``profilestream train``."""
    trainer = commands.add_parser("train", help="train the item model from an event log")
    trainer.add_argument("--events", type=Path, required=True, help="JSONL event log")
    trainer.add_argument("--out", type=Path, required=True, help="model folder (versions inside)")
    trainer.add_argument("--attributes", type=Path, help="JSON: item id -> list of attribute ids")
    trainer.set_defaults(handler=_train_command)


def _train_command(args: argparse.Namespace) -> None:
    lines = args.events.read_bytes().splitlines()
    histories = histories_from_events(lines)
    attributes = json.loads(args.attributes.read_text()) if args.attributes else None
    model, folder = train(histories, attributes, args.out)
    print(f"trained {model.n_items:,} items on {model.manifest['n_events']:,} events -> {folder}")
