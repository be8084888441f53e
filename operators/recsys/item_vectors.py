"""Catalog items embedded once, looked up by item id in the stream.

A view or a purchase says "this user is interested in this item"; its vector should be the
item's, not an embedding of whatever category and brand strings the event happens to carry.
:func:`embed_catalog` embeds each item once -- title, category and brand, as a passage --
and the flow looks the vector up by ``item_id`` (:meth:`ItemVectors.get`); only items the
catalog does not know fall back to embedding their category and brand.

``profilestream embed-items --catalog catalog.jsonl --out vectors/`` writes a version
folder like the item model's (``vectors/<version>/`` with ``vectors.npy``, ``items.json``
and ``manifest.json``, the manifest renamed in last), and a running flow started with
``--item-vectors-dir vectors/`` picks the newest up without a restart. The manifest names
the embedding model: vectors from another model than the flow's are refused, since they
would live in another space.

>>> import numpy as np
>>> class Fake:
...     name, dim, prompts = "fake", 2, {"passage": "passage: "}
...     def encode(self, texts): return np.array([[len(t), 1.0] for t in texts]) / 10
>>> vectors = embed_catalog([CatalogEntry("i1", "Red Dress", "Dresses", "Aurora")], Fake())
>>> vectors.get("i1").tolist(), vectors.get("nope")
([3.30078125, 0.0999755859375], None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from operators.text.embedding import TextEncoder, as_passage


class CatalogEntry(msgspec.Struct, frozen=True):
    """One catalog line: the fields an item's vector is made of (others are ignored)."""

    item_id: str
    title: str = ""
    category: str | None = None
    brand: str | None = None

    def text(self) -> str:
        """What is embedded: the title, then category and brand when the title lacks them."""
        parts = [self.title] if self.title else []
        parts += [p for p in (self.category, self.brand) if p and p not in self.title]
        return " ".join(parts) or self.item_id


def read_catalog(path: Path) -> Iterator[CatalogEntry]:
    """Catalog entries from a JSONL file (``item_id``, ``title``, ``category``, ``brand``)."""
    decoder = msgspec.json.Decoder(CatalogEntry)
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield decoder.decode(line)
                except msgspec.DecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a catalog entry: {exc}") from exc


@dataclass(frozen=True)
class ItemVectors:
    """Unit vectors of catalog items (float16, one row per item) and the model they came from."""

    version: str
    model_name: str
    item_ids: list[str]
    vectors: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {item: i for i, item in enumerate(self.item_ids)})

    def get(self, item_id: str | None) -> np.ndarray | None:
        """The item's vector (float32), or ``None`` if the catalog does not know it."""
        row = self.index.get(item_id) if item_id is not None else None
        return None if row is None else self.vectors[row].astype(np.float32)


def embed_catalog(
    entries: Iterable[CatalogEntry], encoder: Any, batch_size: int = 256, version: str = ""
) -> ItemVectors:
    """Embed every entry once (its text as a passage) with ``encoder``'s ``encode``."""
    items = list({e.item_id: e for e in entries}.values())  # the last line of an id wins
    prompts = getattr(encoder, "prompts", {})
    texts = [as_passage(e.text(), prompts) for e in items]
    rows = [
        np.asarray(encoder.encode(texts[i : i + batch_size]))
        for i in range(0, len(texts), batch_size)
    ]
    matrix = np.concatenate(rows) if rows else np.zeros((0, encoder.dim))
    return ItemVectors(
        version or _new_version(), encoder.name, [e.item_id for e in items],
        matrix.astype(np.float16),
    )  # fmt: skip


def _new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def save_item_vectors(vectors: ItemVectors, root: Path) -> Path:
    """Write ``root/<version>/``; the manifest goes in last, so a reader never sees half."""
    folder = root / vectors.version
    folder.mkdir(parents=True, exist_ok=False)
    np.save(folder / "vectors.npy", vectors.vectors)
    (folder / "items.json").write_text(json.dumps(vectors.item_ids))
    manifest = {
        "version": vectors.version,
        "model": vectors.model_name,
        "items": len(vectors.item_ids),
        "dim": int(vectors.vectors.shape[1]) if vectors.vectors.ndim == 2 else 0,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / "manifest.json")
    return folder


def load_item_vectors(folder: Path) -> ItemVectors:
    """Read one version folder written by :func:`save_item_vectors`."""
    manifest = json.loads((folder / "manifest.json").read_text())
    vectors = np.load(folder / "vectors.npy")
    item_ids = json.loads((folder / "items.json").read_text())
    if len(item_ids) != len(vectors):
        raise ValueError(f"{folder}: {len(item_ids)} ids for {len(vectors)} vectors")
    return ItemVectors(manifest["version"], manifest["model"], item_ids, vectors)


def loader_for(encoder: TextEncoder) -> Any:
    """A loader for :class:`~dataflow.model_watch.ModelWatcher` that refuses vectors made by
    another model than ``encoder``."""

    def load(folder: Path) -> ItemVectors:
        vectors = load_item_vectors(folder)
        if vectors.model_name != encoder.name:
            raise ValueError(
                f"{folder} holds vectors of {vectors.model_name!r}; the flow embeds with "
                f"{encoder.name!r}: run `profilestream embed-items` with the flow's model"
            )
        return vectors

    return load
