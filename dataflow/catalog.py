"""``profilestream embed-items``: embed a catalog once, for the flow to look items up by id.

    profilestream generate --events 1000 --out events.jsonl --catalog catalog.jsonl
    profilestream embed-items --catalog catalog.jsonl --out item-vectors/
    profilestream run --input-path events.jsonl --item-vectors-dir item-vectors/

The vectors are made with the model the flow is configured with (the same ``--embed-model``,
``--model-dir`` and precision flags, or ``PROFILESTREAM_*`` variables), written as a new
version folder; a running flow picks it up within ``--model-poll-s``.
"""

from __future__ import annotations

import time
from pathlib import Path

from dataflow.config import Config
from dataflow.factories import shared_embedder
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
