"""``profilestream train-sentiment``: a sentiment model from labelled CSVs, or the default."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dataflow.eval import sentiment
from dataflow.eval.datasets import shared_data_dir
from dataflow.eval.sentiment import PARTS, build_default_model, flow_embedder
from operators.text import (
    DEFAULT_BITS,
    DEFAULT_C,
    DEFAULT_MODEL_DIR,
    add_embedding_head,
    read_sentiment_csv,
    train_sentiment,
)
from operators.text.embedding import embed_queries


def add_command(subparsers: Any) -> None:
    """Register ``profilestream train-sentiment``."""
    train = subparsers.add_parser(
        "train-sentiment",
        help="train a sentiment model from labelled CSVs, or rebuild the shipped default",
        description=sentiment.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--csv", type=Path, action="append", default=[], help="training CSV (repeatable)"
    )
    train.add_argument("--part", choices=PARTS, default="all", help="rows of each CSV to use")
    train.add_argument("--out", type=Path, help="folder to write the model to")
    train.add_argument(
        "--default",
        action="store_true",
        help="rebuild the shipped model from its licensed sources "
        f"(default --out {DEFAULT_MODEL_DIR})",
    )
    train.add_argument("--shared-data", type=Path, default=None, help="the shared data sets folder")
    train.add_argument(
        "--bits", type=int, help=f"log2 of the hash buckets (default {DEFAULT_BITS})"
    )
    train.add_argument(
        "--c", type=float, help=f"inverse L2 regularisation strength (default {DEFAULT_C})"
    )
    train.add_argument(
        "--embedding-head",
        action="store_true",
        help="also train a head on the texts' embeddings (the flow's model embeds them)",
    )
    train.set_defaults(handler=_train_command)


def _train_command(args: argparse.Namespace) -> None:
    if args.default:
        if args.csv or args.bits or args.c:
            raise ValueError("--default has its own sources and settings; drop --csv, --bits, --c")
        model = build_default_model(args.shared_data or shared_data_dir())
        out = args.out or DEFAULT_MODEL_DIR
    else:
        if not args.csv or args.out is None:
            raise ValueError("give --csv (one or more) and --out, or --default")
        parts = [read_sentiment_csv(path, args.part) for path in args.csv]
        model = train_sentiment(
            [t for p in parts for t in p.texts],
            np.concatenate([p.labels for p in parts]),
            bits=args.bits or DEFAULT_BITS,
            c=args.c or DEFAULT_C,
        )
        sources = [
            {"name": str(path), "part": args.part, "rows": len(p.texts)}
            for path, p in zip(args.csv, parts, strict=True)
        ]
        model = replace(model, manifest={**model.manifest, "sources": sources})
        if args.embedding_head:
            texts = [t for p in parts for t in p.texts]
            labels = np.concatenate([p.labels for p in parts])
            encoder = flow_embedder()
            model = add_embedding_head(model, embed_queries(encoder, texts), labels, encoder.name)
        out = args.out
    model.save(out)
    print(f"trained on {model.manifest['n_train']} texts; wrote {out}")
    for name, figures in model.manifest.get("metrics", {}).items():
        print(f"  {name}: {figures}")
