"""``profilestream embed-items``: embed a catalog with the flow's model for ``--item-vectors-dir``.

profilestream embed-items --catalog catalog.jsonl --out item-vectors/"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dataflow import catalog
from dataflow.catalog import embed_items
from dataflow.config import Config, add_config_arguments, config_values


def _command(args: argparse.Namespace) -> None:
    config = Config(**config_values(args))
    out = args.out or config.item_vectors_dir
    if out is None:
        raise ValueError("give --out (or --item-vectors-dir) for the vector versions")
    embed_items(args.catalog, out, config)


def add_command(subparsers: Any) -> None:
    """Register ``profilestream embed-items``."""
    parser = subparsers.add_parser(
        "embed-items",
        help="embed a catalog (JSONL: item_id, title, category, brand) for --item-vectors-dir",
        description=catalog.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--catalog", type=Path, required=True, help="catalog JSONL file")
    parser.add_argument("--out", type=Path, default=None, help="folder of vector versions")
    add_config_arguments(parser)
    parser.set_defaults(handler=_command)
