"""``profilestream embed-items``: embed a catalog once, for the flow to look items up by id.

    profilestream generate --events 1000 --out events.jsonl --catalog catalog.jsonl
    profilestream embed-items --catalog catalog.jsonl --out item-vectors/
    profilestream run --input-path events.jsonl --item-vectors-dir item-vectors/

The vectors are made with the model the flow is configured with (the same ``--embed-model``,
``--model-dir`` and precision flags, or ``PROFILESTREAM_*`` variables), written as a new
version folder; a running flow picks it up within ``--model-poll-s``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from dataflow.config import Config, add_config_arguments, config_values
from dataflow.flow import shared_embedder
from operators.recsys import embed_catalog, read_catalog, save_item_vectors


def embed_items(catalog: Path, out: Path, config: Config) -> Path:
    """Embed every entry of ``catalog`` with ``config``'s model; the new version folder."""
    model = shared_embedder(config)
    started = time.perf_counter()
    vectors = embed_catalog(read_catalog(catalog), model, batch_size=config.embed_batch_size)
    folder = save_item_vectors(vectors, out)
    seconds = time.perf_counter() - started
    print(
        f"embedded {len(vectors.item_ids):,} items with {model.name} in {seconds:.1f} s -> {folder}"
    )
    return folder


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
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--catalog", type=Path, required=True, help="catalog JSONL file")
    parser.add_argument("--out", type=Path, default=None, help="folder of vector versions")
    add_config_arguments(parser)
    parser.set_defaults(handler=_command)
