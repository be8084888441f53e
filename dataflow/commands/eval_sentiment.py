"""``profilestream eval-sentiment``: score a sentiment model on a labelled CSV."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dataflow.eval.sentiment import PARTS, flow_embedder
from operators.text import evaluate_sentiment, load_sentiment_model, read_sentiment_csv
from operators.text.embedding import embed_queries


def add_command(subparsers: Any) -> None:
    """Register ``profilestream eval-sentiment``."""
    evaluate = subparsers.add_parser(
        "eval-sentiment",
        help="score a sentiment model on a labelled CSV",
        description="Print n, accuracy, macro-F1 and reviews per second (batched scoring) "
        "of a model on a CSV with columns label (1/0) and review.",
    )
    evaluate.add_argument("--csv", type=Path, required=True, help="labelled CSV")
    evaluate.add_argument("--part", choices=PARTS, default="all", help="rows of the CSV to score")
    evaluate.add_argument(
        "--model", type=Path, default=None, help="model folder (default: shipped)"
    )
    evaluate.add_argument(
        "--json", action="store_true", help="end with one JSON line of the figures"
    )
    evaluate.set_defaults(handler=_eval_command)


def _eval_command(args: argparse.Namespace) -> None:
    model = load_sentiment_model(args.model)
    data = read_sentiment_csv(args.csv, args.part)
    vectors = embed_queries(flow_embedder(), data.texts) if model.embedding else None
    result = evaluate_sentiment(model, data, vectors)
    print(
        f"n={result.n} accuracy={result.accuracy:.4f} macro_f1={result.macro_f1:.4f} "
        f"reviews_per_s={result.reviews_per_s:.0f}"
    )
    if args.json:
        print(json.dumps(asdict(result)))
